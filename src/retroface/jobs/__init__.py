"""Background jobs: long work (batch enrolment, video scans) with progress, cancel and results."""
