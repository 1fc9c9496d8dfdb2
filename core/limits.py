"""Every size limit simstream enforces, in one place, with the reason it has that value.

Five families, checked in different places but spelled only here:

- **Event fields** (the input contract, ``streams/schemas/product_event.schema.json``): characters
  as JSON Schema counts them, plus UTF-8 bytes for the strings Milvus stores in a VARCHAR (Milvus
  counts bytes); ``streams/contracts.py`` checks the bytes, a test checks the schema agrees.
- **Stored fields** (the Milvus collections, ``index/milvus.py``): VARCHAR lengths, the list
  payload and its ARRAY capacity, the bounded ``display`` JSON the query API shows.
- **Messages** (Kafka): the room a dead letter keeps for simstream's headers, the header and key
  caps of a dead letter, the reason text, the room a catalog changelog record keeps; the producer cap itself is a setting
  (``SIMSTREAM_MAX_MESSAGE_BYTES``); the output contract
  (``streams/schemas/neighbor_list.schema.json``) states the id, model and top-K bounds, a test
  checks it agrees.
- **The query API** (``serve/``): query text, attributes and filters per request.
- **Bounded work**: the events a bulk round holds, and what one Milvus call may ask for and return.

The top-K bound follows from the list payload: ``MAX_TOP_K`` is the largest k whose worst-case
list fits (``list_payload_bytes``).
"""

from __future__ import annotations

from simstream.records import FUSED_FIELDS

__all__ = [
    "CONTROL_RECORD_BYTES", "MAX_ID_BYTES", "MAX_BRAND_BYTES", "MAX_CATEGORY_BYTES", "MAX_MODEL_BYTES", "MAX_MPN_CHARS", "MAX_TITLE_CHARS",
    "MAX_DESCRIPTION_CHARS", "MAX_CURRENCY_CHARS", "MAX_IMAGE_URL_CHARS", "MAX_IMAGE_B64_CHARS", "MAX_EVENT_DEPTH",
    "EVENT_FIELD_BYTES", "EVENT_FIELD_CHARS",
    "LIST_PAYLOAD_BYTES", "LIST_CAPACITY", "LIST_FACTS_BYTES", "MAX_TOP_K", "list_payload_bytes",
    "MAX_DISPLAY_BYTES", "MAX_DISPLAY_TITLE_BYTES", "MAX_DISPLAY_IMAGE_URL_BYTES", "MAX_DISPLAY_CURRENCY_BYTES",
    "MAX_CATEGORY_KEY_BYTES", "MAX_ATTRIBUTES", "MAX_ATTRIBUTE_KEY_BYTES", "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_REASON_CHARS", "MAX_ERROR_HEADER_BYTES", "DEAD_LETTER_HEADROOM_BYTES", "MAX_BARE_KEY_BYTES", "CHANGELOG_HEADROOM_BYTES",
    "MAX_QUERY_CHARS", "MAX_QUERY_ATTRIBUTES", "MAX_ATTRIBUTE_FILTERS", "MAX_SERVE_K", "MAX_FILTER_VALUES",
    "MAX_EXCLUDE_IDS", "MAX_SEEDS", "MAX_BATCH_QUERIES",
    "BULK_MAX_HELD_EVENTS", "MILVUS_KEY_PAGE_ROWS", "MILVUS_PAGE_ROWS", "MILVUS_WRITE_ROWS", "MILVUS_RESPONSE_BYTES", "MILVUS_SEARCH_QUERIES",
    "search_hit_bytes", "search_queries_per_call",
]

# --- event fields (the input contract) ----------------------------------------------------------
# Milvus VARCHAR max_length counts UTF-8 bytes: these strings are stored as they come.
MAX_ID_BYTES = 256  # product ids (products, lists, tombstones collections; list entries)
MAX_BRAND_BYTES = 256
MAX_CATEGORY_BYTES = 1000
MAX_MODEL_BYTES = 256  # the model tag stored with a product (ours, not the event's)
# Characters (JSON Schema's maxLength): the encoders read these, Milvus does not store them as is.
MAX_TITLE_CHARS = 2000
MAX_DESCRIPTION_CHARS = 100_000
MAX_MPN_CHARS = 256
MAX_CURRENCY_CHARS = 8
MAX_IMAGE_URL_CHARS = 4096
MAX_IMAGE_B64_CHARS = 13_333_336  # base64 of SIMSTREAM_IMAGE_MAX_BYTES' default (10 MB)
# Nesting allowed in an event (the schema itself needs 3: event > attributes > value), checked
# iteratively before validation: jsonschema recurses, and a deep array would overflow the stack.
MAX_EVENT_DEPTH = 32

#: Byte limits ``parse_event`` checks beyond the schema (the stored VARCHARs).
EVENT_FIELD_BYTES: dict[str, int] = {"product_id": MAX_ID_BYTES, "brand": MAX_BRAND_BYTES,
                                     "category": MAX_CATEGORY_BYTES}
#: The schema's ``maxLength`` per field (tests/core/test_limits.py checks the schema file agrees).
EVENT_FIELD_CHARS: dict[str, int] = {
    "product_id": MAX_ID_BYTES, "title": MAX_TITLE_CHARS, "description": MAX_DESCRIPTION_CHARS,
    "brand": MAX_BRAND_BYTES, "category": MAX_CATEGORY_BYTES, "currency": MAX_CURRENCY_CHARS, "mpn": MAX_MPN_CHARS,
    "image_url": MAX_IMAGE_URL_CHARS, "image_b64": MAX_IMAGE_B64_CHARS,
}

# --- stored lists and the top-K bound ---------------------------------------------------------
# The lists collection holds a published list in a payload VARCHAR and its deep ids in an ARRAY:
# a list that does not fit fails its upsert on every retry, so the settings refuse such a size.
LIST_PAYLOAD_BYTES = 65_535
# The control record (simstream.generations): a few generations with their fusion configs inline (~6 KB
# each); a VARCHAR field of the control collection.
CONTROL_RECORD_BYTES = 65_535
LIST_CAPACITY = 1000  # the ARRAY's max_capacity: the deepest recorded list
# A list's facts (index/rows.py HeadFacts: 16-byte digest, the owner's row as two int64, one float32
# score per deep member), base64 in a VARCHAR beside the list.
LIST_FACTS_BYTES = 4 * -(-(16 + 2 * 8 + 4 * LIST_CAPACITY) // 3)


def list_payload_bytes(k: int) -> int:
    """Worst-case bytes of a published list of ``k`` neighbours (``NeighbourList.to_json``, orjson).

    A string of 256 UTF-8 bytes (product_id, model: Milvus VARCHAR 256), every byte a control
    character, is 6 * 256 + 2 = 1538 ("\\u0001"); a float at most 24 ("-2.2250738585072014e-308");
    an int64 at most 20. One neighbour, with its comma:
    {"product_id":S,"score":F,"fields":{..},"match_probability":F}, = 58 + 1538 + 2 * 24 + fields
    (8 x ("name": + 24) + 7 commas = 53 + 8 * 27 + 7 = 276) = 1920. The envelope {"product_id":S,
    "version":I,"neighbors":[],"model":S,"computed_at":I,"source_event_time":I} = 86 + 2 * 1538 +
    3 * 20 = 3222. So 3222 + 1920 k <= 65,535: k <= 32.
    """
    string, number, integer = 6 * max(MAX_ID_BYTES, MAX_MODEL_BYTES) + 2, 24, 20
    fields = sum(len(f) + 3 + number for f in FUSED_FIELDS) + len(FUSED_FIELDS) - 1
    neighbour = len('{"product_id":,"score":,"fields":{},"match_probability":},') + string + 2 * number + fields
    envelope = len('{"product_id":,"version":,"neighbors":[],"model":,"computed_at":,"source_event_time":}')
    return envelope + 2 * string + 3 * integer + k * neighbour


MAX_TOP_K = (LIST_PAYLOAD_BYTES - list_payload_bytes(0)) // (list_payload_bytes(1) - list_payload_bytes(0))  # 33

# --- the serving fields of a product (index/rows.py display_of, brand_key, category_key) --------
MAX_DISPLAY_BYTES = 16_384  # the serialised ``display`` JSON; Milvus caps a JSON value at 64 KiB
MAX_DISPLAY_TITLE_BYTES = 1000
MAX_DISPLAY_IMAGE_URL_BYTES = 2048  # longer URLs are not shown (the encoder still reads them)
MAX_DISPLAY_CURRENCY_BYTES = 16
MAX_CATEGORY_KEY_BYTES = 1024
MAX_ATTRIBUTES = 32  # attributes kept for display and filters
MAX_ATTRIBUTE_KEY_BYTES = 64
MAX_ATTRIBUTE_VALUE_BYTES = 256

# --- dead letters -----------------------------------------------------------------------------
MAX_REASON_CHARS = 500  # of a rejection's reason (a schema message may quote a 100 kB string)
MAX_ERROR_HEADER_BYTES = 1000  # the ``x-simstream-error`` header
DEAD_LETTER_HEADROOM_BYTES = 64_000  # kept free under the producer cap for simstream's headers and the request
MAX_BARE_KEY_BYTES = 1024  # a dead letter Kafka refused goes again as a bare pointer, its key cut to this

# --- the catalog changelog ------------------------------------------------------------------------
CHANGELOG_HEADROOM_BYTES = 4_096  # kept free under the producer cap for a record's headers and batch framing

# --- the query API (serve/) -----------------------------------------------------------------------
MAX_QUERY_CHARS = 500  # a text search
MAX_QUERY_ATTRIBUTES = 64  # attributes of a query document
MAX_ATTRIBUTE_FILTERS = 8  # attr.NAME=VALUE filters per request
MAX_FILTER_VALUES = 50  # values of one IN / NOT filter (brand, brand_not, category, category_not)
MAX_EXCLUDE_IDS = 1000  # ids left out of one query's results (seen, in the cart)
MAX_SEEDS = 50  # positive plus negative examples of one recommend query
MAX_BATCH_QUERIES = 100  # queries in one POST /v1/batch
MAX_SERVE_K = 1000  # the highest SIMSTREAM_SERVE_MAX_K: hits per query (live queries; a published list holds top_k)

# --- bounded work ------------------------------------------------------------------------------------
# The bulk path holds its input's offsets until every list is requested: at most this many events
# (their records stay in memory), then it requests every list and starts a new round.
BULK_MAX_HELD_EVENTS = 100_000

MILVUS_PAGE_ROWS = 2_000  # rows per paged read (start-up builds, every-list reads): bounded memory in flight
# Rows per page of a read of keys and stamps only (no vectors, no payloads). Each milvus-lite
# iterator page costs a pass over the whole collection (~0.8 s at 100k products of 3,232-d, whatever
# the fields asked): few large pages, not many small ones. 16,384 is Milvus' largest query window.
MILVUS_KEY_PAGE_ROWS = 16_384
MILVUS_WRITE_ROWS = 256  # rows per upsert call: bounded request size, whatever a batch holds

# Milvus 2.3's proxy sends at most 64 MiB in one gRPC response (proxy.grpc.serverMaxSendSize): a
# search that returns each hit's vector (256 queries x 21 hits x 3,232 floats is ~69.5 MB) must be
# cut into calls whose worst-case answer stays well under it.
MILVUS_RESPONSE_BYTES = 32 * 1024 * 1024  # half the cap: room for framing we do not count
MILVUS_SEARCH_QUERIES = 256  # queries per search call at most, whatever their answers' size


def search_hit_bytes(dim: int, *, with_vector: bool) -> int:
    """Worst-case bytes of one search hit: its id (a VARCHAR of ``MAX_ID_BYTES``), the distance,
    a small output field or the float32 vector, and 64 bytes of protobuf framing."""
    return MAX_ID_BYTES + 8 + (4 * dim if with_vector else 16) + 64


def search_queries_per_call(limit: int, hit_bytes: int) -> int:
    """How many queries of ``limit`` hits one search call may carry so that its answer stays
    under ``MILVUS_RESPONSE_BYTES`` (at least one; at most ``MILVUS_SEARCH_QUERIES``)."""
    return max(1, min(MILVUS_SEARCH_QUERIES, MILVUS_RESPONSE_BYTES // max(1, limit * hit_bytes)))
