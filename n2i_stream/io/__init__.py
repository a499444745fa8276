"""I/O adapters at the edges: Data Exchange input, results files, ZMQ sources and sinks."""

from .dxchange import DataExchangeFile, References
from .dxchange_writer import DataExchangeWriter, write_truth
from .results import ResultsWriter

__all__ = ["DataExchangeFile", "DataExchangeWriter", "References", "ResultsWriter", "write_truth"]
