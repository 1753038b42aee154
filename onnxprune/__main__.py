"""python -m onnxprune"""
from .cli import main

main()
