"""moesif-segment-connector: Moesif -> Segment sync and WSO2 API Manager -> Moesif forwarder."""

__version__ = "0.1.0"
