"""What the receiver and the worker share: settings, the event envelope, the queue format."""
