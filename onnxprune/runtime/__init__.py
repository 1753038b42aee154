"""Runtime: onnxruntime sessions, the execution-provider table, masked evaluation and benchmarking."""
