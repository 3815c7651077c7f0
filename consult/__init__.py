"""Remote consultation (远程会诊): requests, consent, workflow, scheduling,
the live session's room policy and signed opinions."""
