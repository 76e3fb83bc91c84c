"""What runs on the device: a self-contained runner script (numpy + the runtime only)."""
