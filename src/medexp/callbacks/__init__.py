"""Lightning callbacks of medexp's own, configured in ``conf/callbacks/`` like Lightning's."""
