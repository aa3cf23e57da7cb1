"""Workers declared outside the fleet's own packages, loaded through `FLEET_PLUGINS` as a user's would be."""
