"""Storage: engines and transactions, the schema, and the statements of each table beside the
methods that run them. What differs between databases sits behind one backend per dialect."""
