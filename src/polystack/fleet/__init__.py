"""The machines polystack runs on: hardware discovery (doctor), fingerprints."""
