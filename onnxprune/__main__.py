"""python -m onnxprune"""
from .cli import main

if __name__ == "__main__":   # not when imported (multiprocessing's spawn imports the main module again)
    main()
