"""What the finalizer owns: the queue every pipeline's last stage sends its final event to, the topic
it notifies, and the media bucket its notices link to (shared with the media workers)."""

from __future__ import annotations

from shared.resources import Bucket, Queue, Topic

FINALIZE = Queue("finalize", "fleet-finalize")
NOTIFICATIONS = Topic("notifications", "fleet-notifications")
MEDIA = Bucket("media", "fleet-media")
