"""pyelevator_pool: a connection-pooled, thread-safe client for the Elevator key-value server.

>>> from pyelevator_pool import Elevator
>>> E = Elevator()              # bound to the 'default' database on 127.0.0.1:4141
>>> E.Put('abc', '123')
>>> E.Get('abc')
b'123'
"""
from __future__ import annotations

import logging

from .client import Elevator, WriteBatch
from .errors import (AddressError, AuthenticationError, CompressionUnavailable, ConnectionError,
                     DatabaseError, ElevatorDecodeError, ElevatorError,
                     ElevatorIndexError, ElevatorKeyError, ElevatorOSError, ElevatorRuntimeError,
                     ElevatorTimeout, ElevatorTypeError, ElevatorValueError, LimitExceeded,
                     PoolClosed, PoolError,
                     PoolTimeout, ProtocolError, RequestError, ServerError, SignalError,
                     TransportError)
from .pool import ElevatorPool, PoolStats
from .retry import NO_RETRY, RetryPolicy
from .security import CurveKeys

__version__ = "0.1.0"

# a library does not print: retry warnings reach stderr only if the program configures logging
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Elevator", "WriteBatch", "ElevatorPool", "PoolStats", "RetryPolicy", "NO_RETRY", "CurveKeys",
    "ElevatorError", "ServerError", "ElevatorKeyError", "ElevatorTypeError", "ElevatorValueError",
    "ElevatorIndexError", "ElevatorRuntimeError", "ElevatorOSError", "DatabaseError",
    "SignalError", "RequestError", "TransportError", "ElevatorTimeout", "ConnectionError",
    "ProtocolError", "ElevatorDecodeError", "CompressionUnavailable", "PoolError", "PoolTimeout",
    "PoolClosed",
    "AuthenticationError", "AddressError", "LimitExceeded",
    "__version__",
]
