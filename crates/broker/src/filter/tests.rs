//! Filter semantics table: every operator, nested fields, arrays, missing fields, no-match
//! cases, and the errors of invalid patterns.

use serde_json::{Value, json};

use super::*;

fn event() -> Value {
    json!({
        "specversion": "1.0",
        "id": "e-1",
        "source": "/shop/orders",
        "type": "order.placed",
        "subject": "order-42",
        "region": "EU-west",
        "data": {
            "amount": 120.5,
            "count": 3,
            "currency": "EUR",
            "express": true,
            "coupon": null,
            "tags": ["gift", "fragile"],
            "customer": {"id": "c-7", "tier": "gold", "address": {"country": "DE"}},
            "items": [{"sku": "A-1", "qty": 1}, {"sku": "B-2", "qty": 5}]
        }
    })
}

#[test]
fn semantics_table() {
    let cases: &[(&str, Value, bool)] = &[
        // empty pattern and null
        ("empty matches all", json!({}), true),
        ("null matches all", Value::Null, true),
        // exact values; a list means any of
        ("exact string", json!({"type": ["order.placed"]}), true),
        (
            "exact string no match",
            json!({"type": ["order.paid"]}),
            false,
        ),
        ("any of list", json!({"type": ["x", "order.placed"]}), true),
        ("exact number", json!({"data": {"count": [3]}}), true),
        (
            "exact number as float",
            json!({"data": {"count": [3.0]}}),
            true,
        ),
        (
            "number is not string",
            json!({"data": {"count": ["3"]}}),
            false,
        ),
        ("exact bool", json!({"data": {"express": [true]}}), true),
        (
            "exact bool no match",
            json!({"data": {"express": [false]}}),
            false,
        ),
        (
            "exact null matches null",
            json!({"data": {"coupon": [null]}}),
            true,
        ),
        (
            "exact null not missing",
            json!({"data": {"gone": [null]}}),
            false,
        ),
        (
            "exact is case sensitive",
            json!({"region": ["eu-west"]}),
            false,
        ),
        // several fields: all must match
        (
            "two fields both",
            json!({"type": ["order.placed"], "subject": ["order-42"]}),
            true,
        ),
        (
            "two fields one fails",
            json!({"type": ["order.placed"], "subject": ["x"]}),
            false,
        ),
        // nested fields
        (
            "nested 2 levels",
            json!({"data": {"customer": {"tier": ["gold"]}}}),
            true,
        ),
        (
            "nested 3 levels",
            json!({"data": {"customer": {"address": {"country": ["DE"]}}}}),
            true,
        ),
        (
            "nested no match",
            json!({"data": {"customer": {"tier": ["silver"]}}}),
            false,
        ),
        (
            "nested into scalar",
            json!({"data": {"currency": {"x": ["y"]}}}),
            false,
        ),
        (
            "nested into missing",
            json!({"data": {"nope": {"x": ["y"]}}}),
            false,
        ),
        // arrays in the event: any element
        (
            "array element exact",
            json!({"data": {"tags": ["fragile"]}}),
            true,
        ),
        (
            "array element none",
            json!({"data": {"tags": ["heavy"]}}),
            false,
        ),
        (
            "array of objects",
            json!({"data": {"items": {"sku": ["B-2"]}}}),
            true,
        ),
        (
            "array of objects numeric",
            json!({"data": {"items": {"qty": [{"numeric": [">", 4]}]}}}),
            true,
        ),
        (
            "array of objects none",
            json!({"data": {"items": {"sku": ["C-3"]}}}),
            false,
        ),
        // prefix / suffix
        ("prefix", json!({"source": [{"prefix": "/shop/"}]}), true),
        (
            "prefix no match",
            json!({"source": [{"prefix": "/bank/"}]}),
            false,
        ),
        (
            "prefix on number",
            json!({"data": {"count": [{"prefix": "3"}]}}),
            false,
        ),
        ("suffix", json!({"type": [{"suffix": ".placed"}]}), true),
        (
            "suffix no match",
            json!({"type": [{"suffix": ".paid"}]}),
            false,
        ),
        (
            "prefix on array",
            json!({"data": {"tags": [{"prefix": "fra"}]}}),
            true,
        ),
        // equals-ignore-case
        (
            "ignore case",
            json!({"region": [{"equals-ignore-case": "eu-WEST"}]}),
            true,
        ),
        (
            "ignore case no match",
            json!({"region": [{"equals-ignore-case": "us-east"}]}),
            false,
        ),
        // wildcard
        (
            "wildcard middle",
            json!({"type": [{"wildcard": "order.*"}]}),
            true,
        ),
        (
            "wildcard both",
            json!({"source": [{"wildcard": "*shop*"}]}),
            true,
        ),
        (
            "wildcard inner",
            json!({"subject": [{"wildcard": "o*-4*"}]}),
            true,
        ),
        (
            "wildcard no star exact",
            json!({"subject": [{"wildcard": "order-42"}]}),
            true,
        ),
        (
            "wildcard no match",
            json!({"type": [{"wildcard": "payment.*"}]}),
            false,
        ),
        (
            "wildcard needs whole",
            json!({"type": [{"wildcard": "order"}]}),
            false,
        ),
        // exists
        (
            "exists true present",
            json!({"subject": [{"exists": true}]}),
            true,
        ),
        (
            "exists true missing",
            json!({"nope": [{"exists": true}]}),
            false,
        ),
        (
            "exists false missing",
            json!({"nope": [{"exists": false}]}),
            true,
        ),
        (
            "exists false present",
            json!({"subject": [{"exists": false}]}),
            false,
        ),
        (
            "exists nested missing",
            json!({"data": {"customer": {"vip": [{"exists": false}]}}}),
            true,
        ),
        (
            "exists under missing parent",
            json!({"nothere": {"x": [{"exists": false}]}}),
            true,
        ),
        (
            "exists on object is not leaf",
            json!({"data": {"customer": [{"exists": true}]}}),
            false,
        ),
        // numeric
        (
            "numeric gt",
            json!({"data": {"amount": [{"numeric": [">", 100]}]}}),
            true,
        ),
        (
            "numeric gt no",
            json!({"data": {"amount": [{"numeric": [">", 200]}]}}),
            false,
        ),
        (
            "numeric range",
            json!({"data": {"amount": [{"numeric": [">=", 120.5, "<", 121]}]}}),
            true,
        ),
        (
            "numeric range no",
            json!({"data": {"amount": [{"numeric": [">", 0, "<=", 100]}]}}),
            false,
        ),
        (
            "numeric eq",
            json!({"data": {"count": [{"numeric": ["=", 3]}]}}),
            true,
        ),
        (
            "numeric le",
            json!({"data": {"count": [{"numeric": ["<=", 3]}]}}),
            true,
        ),
        (
            "numeric lt no",
            json!({"data": {"count": [{"numeric": ["<", 3]}]}}),
            false,
        ),
        (
            "numeric on string",
            json!({"data": {"currency": [{"numeric": [">", 0]}]}}),
            false,
        ),
        (
            "numeric missing",
            json!({"data": {"gone": [{"numeric": [">", 0]}]}}),
            false,
        ),
        // anything-but
        (
            "anything-but value",
            json!({"data": {"currency": [{"anything-but": "USD"}]}}),
            true,
        ),
        (
            "anything-but value no",
            json!({"data": {"currency": [{"anything-but": "EUR"}]}}),
            false,
        ),
        (
            "anything-but list",
            json!({"data": {"currency": [{"anything-but": ["USD", "EUR"]}]}}),
            false,
        ),
        (
            "anything-but number",
            json!({"data": {"count": [{"anything-but": [1, 2]}]}}),
            true,
        ),
        (
            "anything-but number no",
            json!({"data": {"count": [{"anything-but": 3}]}}),
            false,
        ),
        (
            "anything-but prefix",
            json!({"type": [{"anything-but": {"prefix": "payment."}}]}),
            true,
        ),
        (
            "anything-but prefix no",
            json!({"type": [{"anything-but": {"prefix": "order."}}]}),
            false,
        ),
        (
            "anything-but suffix",
            json!({"type": [{"anything-but": {"suffix": ".paid"}}]}),
            true,
        ),
        (
            "anything-but missing",
            json!({"nope": [{"anything-but": "x"}]}),
            false,
        ),
        // mixed conditions in one list: any
        (
            "mixed list",
            json!({"type": [{"prefix": "payment"}, "order.placed"]}),
            true,
        ),
        // $or
        (
            "or first",
            json!({"$or": [{"type": ["order.placed"]}, {"type": ["x"]}]}),
            true,
        ),
        (
            "or second",
            json!({"$or": [{"type": ["x"]}, {"data": {"count": [3]}}]}),
            true,
        ),
        (
            "or none",
            json!({"$or": [{"type": ["x"]}, {"data": {"count": [4]}}]}),
            false,
        ),
        (
            "or with field",
            json!({"source": ["/shop/orders"], "$or": [{"type": ["x"]}, {"subject": ["order-42"]}]}),
            true,
        ),
        (
            "or with failing field",
            json!({"source": ["/bank"], "$or": [{"type": ["order.placed"]}, {"subject": ["order-42"]}]}),
            false,
        ),
        (
            "or nested",
            json!({"data": {"$or": [{"currency": ["USD"]}, {"customer": {"tier": ["gold"]}}]}}),
            true,
        ),
    ];
    let event = event();
    for (name, pattern, want) in cases {
        let filter = Filter::compile(pattern).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(filter.matches(&event), *want, "{name}: {pattern}");
    }
}

#[test]
fn invalid_patterns_name_the_bad_part() {
    let cases: &[(Value, &str)] = &[
        (json!("type"), "filter: must be a JSON object"),
        (
            json!({"type": "order.placed"}),
            "filter.type: must be an array",
        ),
        (
            json!({"type": []}),
            "filter.type: an empty list matches nothing",
        ),
        (
            json!({"type": [["a"]]}),
            "filter.type[0]: a condition cannot be an array",
        ),
        (
            json!({"type": [{"prefix": 1}]}),
            "filter.type[0].prefix: prefix takes a string",
        ),
        (
            json!({"type": [{"prefix": "a", "suffix": "b"}]}),
            "filter.type[0]: a condition object has exactly one operator",
        ),
        (
            json!({"type": [{"regex": "a"}]}),
            "filter.type[0].regex: unknown operator \"regex\"",
        ),
        (
            json!({"data": {"n": [{"numeric": [">"]}]}}),
            "filter.data.n[0].numeric: numeric takes one or two",
        ),
        (
            json!({"data": {"n": [{"numeric": ["~", 1]}]}}),
            "filter.data.n[0].numeric[0]: expected one of",
        ),
        (
            json!({"data": {"n": [{"numeric": [">", "1"]}]}}),
            "filter.data.n[0].numeric[1]: expected a number",
        ),
        (
            json!({"data": {"n": [{"numeric": ["<", 5, ">", 1]}]}}),
            "filter.data.n[0].numeric: a numeric range is a lower bound",
        ),
        (
            json!({"data": {"n": [{"numeric": [">", 5, "<", 1]}]}}),
            "filter.data.n[0].numeric: a numeric range is a lower bound",
        ),
        (
            json!({"x": [{"exists": "yes"}]}),
            "filter.x[0].exists: exists takes true or false",
        ),
        (
            json!({"x": [{"wildcard": "a**b"}]}),
            "filter.x[0].wildcard: consecutive wildcard",
        ),
        (
            json!({"x": [{"anything-but": []}]}),
            "filter.x[0].anything-but: anything-but needs at least one value",
        ),
        (
            json!({"x": [{"anything-but": [true]}]}),
            "filter.x[0].anything-but[0]: anything-but lists strings or numbers",
        ),
        (
            json!({"x": [{"anything-but": {"wildcard": "a"}}]}),
            "filter.x[0].anything-but.wildcard: anything-but takes",
        ),
        (
            json!({"$or": [{"a": ["b"]}]}),
            "filter.$or: $or must be an array of at least two patterns",
        ),
        (
            json!({"$or": [{"a": ["b"]}, {"a": "c"}]}),
            "filter.$or[1].a: must be an array",
        ),
    ];
    for (pattern, want) in cases {
        let e = Filter::compile(pattern).expect_err(&pattern.to_string());
        assert!(
            e.to_string().starts_with(want),
            "{pattern}: got {e:?}, want it to start with {want:?}"
        );
    }
}

#[test]
fn limits_bound_the_cost_of_a_filter() {
    let mut deep = json!({"x": ["y"]});
    for _ in 0..DEPTH_MAX + 1 {
        deep = json!({ "a": deep });
    }
    let e = Filter::compile(&deep).unwrap_err();
    assert!(e.message.contains("nested deeper"), "{e}");
    let many: Vec<Value> = (0..NODES_MAX + 1).map(|i| json!(i)).collect();
    let e = Filter::compile(&json!({ "x": many })).unwrap_err();
    assert!(e.message.contains("at most"), "{e}");
}

#[test]
fn wildcard_backtracks() {
    for (p, s, want) in [
        ("*", "", true),
        ("*", "abc", true),
        ("a*c", "abbbc", true),
        ("a*c", "abbbd", false),
        ("*ab*ab", "xxabyyab", true),
        ("*ab*ab", "xxabyya", false),
        ("a*b*c", "acb", false),
        ("", "", true),
        ("", "a", false),
    ] {
        assert_eq!(wildcard_match(p, s), want, "{p} ~ {s}");
    }
}
