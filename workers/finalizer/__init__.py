"""`finalizer`: closes a job. It reads the final event every pipeline sends to `fleet-finalize`
(seeds/000 §3), decides the job's final status, records it in `fleet-jobs` (with its own retry policy),
notifies `fleet-notifications` over SNS and records five CloudWatch metrics — once per job and outcome,
however often SQS delivers the event. See README.md for the rules."""
