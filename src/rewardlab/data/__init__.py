"""Data files and record formats, below every other layer that reads data: the containers
(:mod:`~rewardlab.data.files`), record-level helpers (:mod:`~rewardlab.data.records`) and Anthropic's
HH-RLHF transcripts with their fixed split (:mod:`~rewardlab.data.hh`). Tasks and feedback sources both
read through here."""
