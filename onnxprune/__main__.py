"""python -m onnxprune"""
from .cli import main

if __name__ == "__main__":   # a spawned worker process (runtime.pool) imports this module again without running it
    main()
