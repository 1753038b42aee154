"""Calibration: loading data, streaming activation statistics, and the calibration stage."""
