"""The service layer: one Registry interface, a local store and a pull-through cache over it."""
