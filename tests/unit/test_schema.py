"""Types as contracts: what each annotation takes, converts, refuses and says in JSON Schema."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import uuid
from typing import Any, Dict, List, Literal, Optional, Tuple, TypedDict, Union

import pytest

from tavrida import schema, wire


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclasses.dataclass
class Line:
    sku: str
    quantity: int = 1


@dataclasses.dataclass
class Order:
    """An order."""

    lines: List[Line]
    color: Optional[Color] = None


@dataclasses.dataclass
class Node:
    name: str
    children: List[Node] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("n must be positive")


class Point(TypedDict):
    x: int
    y: int


def convert(tp: Any, value: Any) -> Any:
    convert_to = schema.converter(tp)
    assert convert_to is not None, f"{tp} is not checked"
    return convert_to(value)


def problems(tp: Any, value: Any) -> List[str]:
    with pytest.raises(schema.Invalid) as caught:
        convert(tp, value)
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("tp,value,expected", [
    (int, 5, 5), (float, 2, 2.0), (float, 2.5, 2.5), (str, "a", "a"), (bool, False, False),
    (type(None), None, None), (None, None, None),
    (List[int], [1, 2], [1, 2]), (list, [1, "a"], [1, "a"]),
    (Tuple[int, ...], [1, 2], (1, 2)), (Tuple[int, str], [1, "a"], (1, "a")),
    (set, [1, 2], {1, 2}), (Dict[str, int], {"a": 1}, {"a": 1}),
    (Optional[int], None, None), (Optional[int], 3, 3), (Union[int, str], "x", "x"),
    (Literal["a", "b"], "b", "b"), (Color, "green", Color.GREEN),
    (datetime.datetime, "2024-05-01T10:00:00Z",
     datetime.datetime(2024, 5, 1, 10, tzinfo=datetime.timezone.utc)),
    (datetime.date, "2024-05-01", datetime.date(2024, 5, 1)),
    (datetime.time, "10:30", datetime.time(10, 30)),
    (uuid.UUID, "12345678-1234-5678-1234-567812345678",
     uuid.UUID("12345678-1234-5678-1234-567812345678")),
    (decimal.Decimal, "1.10", decimal.Decimal("1.10")), (decimal.Decimal, 2, decimal.Decimal(2)),
    (Point, {"x": 1, "y": 2, "z": 3}, {"x": 1, "y": 2}),
])
def test_json_values_convert_to_their_annotation(tp, value, expected):
    result = convert(tp, value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("tp,value,expected", [
    (int, "abc", "expected int, got str 'abc'"),
    (int, True, "expected int, got bool True"),
    (int, 1.5, "expected int, got float 1.5"),
    (float, "1", "expected float, got str '1'"),
    (str, 1, "expected str, got int 1"),
    (bool, 1, "expected bool, got int 1"),
    (type(None), 0, "expected None, got int 0"),
    (Literal["a", "b"], "c", "expected one of 'a', 'b', got str 'c'"),
    (Literal[1], True, "expected one of 1, got bool True"),
    (Color, "blue", "expected Color (one of 'red', 'green'), got str 'blue'"),
    (datetime.date, "yesterday", "expected date (ISO 8601 text), got str 'yesterday'"),
    (uuid.UUID, "nope", "expected UUID (its text), got str 'nope'"),
    (decimal.Decimal, "NaN", "expected Decimal (a number or its text), got str 'NaN'"),
    (Union[int, str], None, "expected Union[int, str], got None"),
    (Dict[str, int], [], "expected Dict[str, int], got list []"),
])
def test_a_mismatch_says_what_was_expected_and_what_came(tp, value, expected):
    assert problems(tp, value) == [expected]


def test_every_offending_field_is_named_by_its_path():
    found = problems(Order, {"lines": [{"sku": "a"}, {"quantity": "2"}, 7], "color": "blue"})
    assert found == [
        "lines[1].sku: missing (expected str)",
        "lines[1].quantity: expected int, got str '2'",
        "lines[2]: expected Line (an object), got int 7",
        "color: expected Color (one of 'red', 'green'), got str 'blue'",
    ]


def test_dataclasses_arrive_as_dataclasses_unknown_keys_dropped():
    order = convert(Order, {"lines": [{"sku": "a", "extra": 1}], "color": "red", "more": 2})
    assert order == Order([Line("a", 1)], Color.RED)
    assert type(order.lines[0]) is Line


def test_a_type_that_names_itself_converts_all_the_way_down():
    assert problems(Node, {"name": "a", "children": [{"name": "b", "children": [{"name": 1}]}]}
                    ) == ["children[0].children[0].name: expected str, got int 1"]
    assert convert(Node, {"name": "a", "children": [{"name": "b"}]}) == Node("a", [Node("b")])


def test_a_post_init_that_refuses_is_a_problem_not_a_crash():
    assert problems(Positive, {"n": 0}) == ["invalid Positive: n must be positive"]


def test_a_typeddict_misses_its_required_keys():
    assert problems(Point, {"x": 1}) == ["y: missing (expected int)"]


@pytest.mark.parametrize("tp", [Any, object, "not a type", complex])
def test_anything_else_is_not_checked(tp):
    assert schema.converter(tp) is None


def test_bare_containers_check_only_the_container():
    assert convert(List, [1, "a"]) == [1, "a"]
    assert convert(Dict, {"a": [1]}) == {"a": [1]}
    assert problems(List, {}) == ["expected List, got dict {}"]


def test_pydantic_models_are_validated_by_pydantic():
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):
        sku: str
        quantity: int

    item = convert(Item, {"sku": "a", "quantity": "2"})  # pydantic's own (lax) rules
    assert item == Item(sku="a", quantity=2)
    [problem] = problems(Item, {"sku": "a", "quantity": "two"})
    assert problem.startswith("quantity: Input should be a valid integer")
    assert problem.endswith("(got str 'two')")


def test_values_of_these_types_are_written_as_the_json_they_are_read_from():
    when = datetime.datetime(2024, 5, 1, 10, tzinfo=datetime.timezone.utc)
    ident = uuid.uuid4()
    payload = {"when": when, "day": when.date(), "id": ident, "color": Color.RED,
               "order": Order([Line("a")], Color.GREEN), "price": decimal.Decimal("1.10"),
               "tags": frozenset(["x"])}
    text = wire.dumps(payload)
    assert text == ('{"when":"2024-05-01T10:00:00+00:00","day":"2024-05-01","id":"' + str(ident)
                    + '","color":"red","order":{"lines":[{"sku":"a","quantity":1}],'
                    '"color":"green"},"price":1.10,"tags":["x"]}')
    read = wire._decoder.decode(text)
    assert convert(datetime.datetime, read["when"]) == when
    assert convert(uuid.UUID, read["id"]) == ident
    assert convert(Order, read["order"]) == payload["order"]
    assert convert(decimal.Decimal, read["price"]) == decimal.Decimal("1.10")


def test_other_objects_still_cannot_be_written():
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        wire.dumps({"x": object()})


# -- JSON Schema --------------------------------------------------------------------------------

@pytest.mark.parametrize("tp,expected", [
    (int, {"type": "integer"}), (float, {"type": "number"}), (str, {"type": "string"}),
    (bool, {"type": "boolean"}), (None, {"type": "null"}),
    (List[int], {"type": "array", "items": {"type": "integer"}}),
    (Tuple[int, str], {"type": "array", "items": [{"type": "integer"}, {"type": "string"}],
                       "minItems": 2, "maxItems": 2}),
    (Dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
    (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
    (Literal["a"], {"const": "a"}), (Literal["a", "b"], {"enum": ["a", "b"]}),
    (datetime.datetime, {"type": "string", "format": "date-time"}),
    (datetime.date, {"type": "string", "format": "date"}),
    (uuid.UUID, {"type": "string", "format": "uuid"}),
    (Any, {}),
])
def test_json_schema_of_each_type(tp, expected):
    assert schema.SchemaBuilder().schema(tp) == expected


def test_records_and_enums_are_named_schemas_defined_once():
    builder = schema.SchemaBuilder("#/defs/")
    assert builder.schema(Order) == {"$ref": "#/defs/Order"}
    assert builder.schema(List[Order]) == {"type": "array", "items": {"$ref": "#/defs/Order"}}
    assert builder.definitions == {
        "Order": {"type": "object", "title": "Order", "description": "An order.",
                  "properties": {"lines": {"type": "array", "items": {"$ref": "#/defs/Line"}},
                                 "color": {"anyOf": [{"$ref": "#/defs/Color"},
                                                     {"type": "null"}]}},
                  "required": ["lines"]},
        "Line": {"type": "object", "title": "Line",
                 "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
                 "required": ["sku"]},
        "Color": {"title": "Color", "enum": ["red", "green"]},
    }
