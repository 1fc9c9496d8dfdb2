"""Which Milvus failures are worth retrying: the line between IndexUnavailable and IndexRejected.

A retry helps when Milvus was slow, down or busy; it cannot help when Milvus refuses the data
(a vector of the wrong dimension, a value over a VARCHAR limit, an invalid filter expression, a
row that does not match the schema). Retrying those would hold the partition until the retries
run out, so they become IndexRejected and the stream dead-letters the record instead.

Signals, in order: pymilvus's own client-side checks (exception classes); the server's
``retriable`` flag (always a retry); its ``is_input_error`` flag (Milvus 2.6+); the status codes
of the "invalid input" family (Milvus ``merr`` codes and the legacy ``ErrorCode`` enum; milvus-lite
answers every validation failure with code = error_code = 6). Anything else is unavailability.
"""

from __future__ import annotations

import grpc
from pymilvus import MilvusException
from pymilvus.exceptions import (
    DataNotMatchException, DataTypeNotMatchException, DataTypeNotSupportException, FieldsTypeException,
    FieldTypeException, ParamError, PrimaryKeyException, SchemaMismatchRetryableException,
)
from pymilvus.grpc_gen import common_pb2

from simstream.errors import IndexRejected, IndexUnavailable

__all__ = [
    "CLIENT_REJECTIONS", "REJECTED_CODES", "REJECTED_LEGACY_CODES", "MILVUS_LITE_ILLEGAL_ARGUMENT",
    "LEGACY_CATCH_ALL", "LEGACY_REFUSAL_SIGNS", "REJECTED_GRPC", "is_rejection", "is_milvus_failure", "translate",
]

# pymilvus raises these before sending anything: the request itself is malformed.
CLIENT_REJECTIONS: tuple[type[MilvusException], ...] = (
    ParamError, DataTypeNotMatchException, DataNotMatchException, DataTypeNotSupportException, PrimaryKeyException,
    FieldsTypeException, FieldTypeException, SchemaMismatchRetryableException,
)
# Milvus merr codes (pkg/util/merr/errors.go): illegal collection schema, parameter invalid /
# missing / too large, field not found / invalid name, invalid insert data, bad primary key.
REJECTED_CODES = frozenset({105, 1100, 1101, 1102, 1700, 1701, 1804, 1806})
# The legacy common.ErrorCode enum (status.error_code) of the same family.
REJECTED_LEGACY_CODES = frozenset({
    common_pb2.IllegalArgument, common_pb2.IllegalDimension, common_pb2.IllegalRowRecord,
    common_pb2.IllegalVectorID, common_pb2.SchemaMismatch,
})
MILVUS_LITE_ILLEGAL_ARGUMENT = 6  # milvus-lite sets both codes to 6 (adapter/grpc/errors.py)
LEGACY_CATCH_ALL = 65535
# Messages of Milvus 2.3's refusals of the data (measured against milvus 2.3.5 in CI).
LEGACY_REFUSAL_SIGNS = ("cannot parse expression", "should divide the dim", "exceeds max length",
                        "length of varchar", "dim mismatch", "type mismatch", "invalid expression")
REJECTED_GRPC = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})


def is_rejection(exc: BaseException) -> bool:
    """True when Milvus (or pymilvus on its behalf) refuses the request's data: retrying cannot help."""
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in REJECTED_GRPC
    if not isinstance(exc, MilvusException):
        return False
    if isinstance(exc, CLIENT_REJECTIONS):
        return True
    if getattr(exc, "retriable", False):
        return False
    if getattr(exc, "is_input_error", False):
        return True
    code, legacy = exc.code, exc.compatible_code
    if isinstance(code, grpc.StatusCode):  # a gRPC failure that pymilvus's retry loop wrapped
        return code in REJECTED_GRPC
    if code == legacy == MILVUS_LITE_ILLEGAL_ARGUMENT:
        return True
    if code in REJECTED_CODES or legacy in REJECTED_LEGACY_CODES:
        return True
    # Milvus 2.3 answers most refusals with the catch-all code 65535; only the message tells.
    return code == LEGACY_CATCH_ALL and any(sign in str(exc).lower() for sign in LEGACY_REFUSAL_SIGNS)


def is_milvus_failure(exc: BaseException) -> bool:
    """An exception that comes from talking to Milvus (anything else is a bug and propagates)."""
    return isinstance(exc, (MilvusException, grpc.RpcError, grpc.FutureTimeoutError, ConnectionError, TimeoutError,
                            OSError))


def translate(exc: BaseException, what: str) -> IndexRejected | IndexUnavailable:
    """The simstream error for a Milvus failure during ``what`` (e.g. "upsert into x_products")."""
    if is_rejection(exc):
        return IndexRejected(f"milvus refused the data ({what}): {exc}")
    return IndexUnavailable(f"milvus unavailable ({what}): {exc}")
