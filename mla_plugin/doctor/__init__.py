"""`python -m mla_plugin doctor`: can this machine serve MLA_XQA_SM120? facts (what is
installed and visible), verdict (what blocks serving), cli (text and JSON output)."""
