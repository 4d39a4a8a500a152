use super::*;
use chrono::TimeZone;
use serde_json::json;

fn vars() -> Map<String, Value> {
    json!({
        "choice": "1",
        "digits": "442079460000",
        "n": 7,
        "f": 2.5,
        "empty": "",
        "flag": true,
        "name": "ann",
        "call": {"from": "alice", "headers": {"x-id": "9"}},
        "list": [10, 20, 30],
        "users": [{"firstname": "Ann", "age": 31}, {"firstname": "Bob", "age": 25}],
        "now": {"utc": {"hours": 13}}
    })
    .as_object()
    .cloned()
    .unwrap()
}

fn run(src: &str) -> Result<Value, ExprError> {
    Expr::parse(src)?.eval(&vars())
}

fn check(cases: &[(&str, Value)]) {
    for (src, want) in cases {
        assert_eq!(
            &run(src).unwrap_or_else(|e| panic!("{src}: {e}")),
            want,
            "{src}"
        );
    }
}

#[test]
fn evaluates_valid_expressions() {
    check(&[
        ("1", json!(1)),
        ("-3", json!(-3)),
        ("1.5", json!(1.5)),
        ("'single' + \"double\"", json!("singledouble")),
        ("\"a\\\"b\\n\"", json!("a\"b\n")),
        ("true", json!(true)),
        ("false", json!(false)),
        ("null", json!(null)),
        ("1 + 2 * 3", json!(7)),
        ("(1 + 2) * 3", json!(9)),
        ("10 - 4 - 3", json!(3)),
        ("7 / 2", json!(3.5)),
        ("8 / 2", json!(4)),
        ("7 % 3", json!(1)),
        ("7.5 % 2", json!(1.5)),
        ("n * f", json!(17.5)),
        ("-n", json!(-7)),
        ("9223372036854775807 + 1", json!(9223372036854775808.0)),
        ("\"+\" + digits", json!("+442079460000")),
        ("\"n=\" + n", json!("n=7")),
        ("\"x\" + 2.0", json!("x2")),
        ("\"ok \" + flag", json!("ok true")),
        ("choice == \"1\"", json!(true)),
        ("choice == 1", json!(true)),
        ("choice != 2", json!(true)),
        ("1 == 1.0", json!(true)),
        ("\"abc\" == \"abc\"", json!(true)),
        ("null == missing", json!(true)),
        ("n > 5 and n <= 7", json!(true)),
        ("n < 5 or choice == '1'", json!(true)),
        ("n >= 8 || false", json!(false)),
        ("flag && !empty", json!(true)),
        ("not flag", json!(false)),
        ("not n == 7", json!(false)),
        ("\"b\" > \"a\"", json!(true)),
        ("digits > 5", json!(true)),
        ("call.from", json!("alice")),
        ("call.headers.x_id", json!(null)),
        ("list.1", json!(20)),
        ("now.utc.hours >= 9 and now.utc.hours < 17", json!(true)),
        ("missing.deep.path", json!(null)),
        ("len(digits)", json!(12)),
        ("len(missing)", json!(0)),
        ("len(list)", json!(3)),
        ("str(n) + str(null)", json!("7")),
        ("num(choice) + 1", json!(2)),
        ("num(' 2.5 ')", json!(2.5)),
        ("num(true)", json!(1)),
        ("upper('ab') + lower('CD')", json!("ABcd")),
        ("trim('  x ')", json!("x")),
        ("contains(digits, '2079')", json!(true)),
        ("contains(list, 20)", json!(true)),
        ("starts_with(digits, '44')", json!(true)),
        ("0 or ''", json!(false)),
    ]);
}

#[test]
fn index_access_and_literals() {
    check(&[
        ("users[0].firstname", json!("Ann")),
        ("users[1]['age']", json!(25)),
        ("users.1.firstname", json!("Bob")),
        ("users[n - 6].age", json!(25)),
        ("users[5].firstname", json!(null)),
        ("users[-1].firstname", json!("Bob")),
        ("list[choice]", json!(20)),
        ("call['headers']['x-id']", json!("9")),
        ("missing[0].x", json!(null)),
        ("name[0]", json!("a")),
        (
            "[1, 'a', [true], {'k': n}]",
            json!([1, "a", [true], {"k": 7}]),
        ),
        ("[]", json!([])),
        ("{}", json!({})),
        (
            "{'name': 'Ann', age: 3, 'n': n + 1,}",
            json!({"name": "Ann", "age": 3, "n": 8}),
        ),
        ("{'a': {'b': [1, 2]}}.a.b[1]", json!(2)),
        ("[10, 20][1]", json!(20)),
        ("a.1.2", json!(null)),
        ("[1, 2] + [3]", json!([1, 2, 3])),
        ("[1, 2] == [1, 2]", json!(true)),
    ]);
}

#[test]
fn missing_values_behave_as_in_chatlayer() {
    check(&[
        ("'Hello ' + nobody", json!("Hello ")),
        ("nobody + ' there'", json!(" there")),
        ("count + 1", json!(1)),
        ("1 + count", json!(1)),
        ("count - 1", json!(-1)),
        ("count * 3", json!(0)),
        ("count > 3", json!(false)),
        ("count < 3", json!(true)),
        ("nobody < 'b'", json!(true)),
        ("-count", json!(0)),
        ("nobody + nobody", json!(null)),
        ("DEFAULT(count, 0) + 1", json!(1)),
        ("DEFAULT(name, 'there')", json!("ann")),
        ("DEFAULT(empty, 'there')", json!("there")),
        ("choice * 2", json!(2)),
        ("'5' - 1", json!(4)),
    ]);
}

#[test]
fn conditionals() {
    check(&[
        ("IF(n > 5, 'big', 'small')", json!("big")),
        ("if(n > 50, 'big', 'small')", json!("small")),
        ("n > 5 ? 'big' : 'small'", json!("big")),
        ("missing ? 1 : 2", json!(2)),
        ("n > 5 ? n > 6 ? 'a' : 'b' : 'c'", json!("a")),
        // Only the chosen side is evaluated.
        ("IF(true, 1, 1 / 0)", json!(1)),
        ("false ? 1 / 0 : 2", json!(2)),
    ]);
}

/// Chatlayer's built-in functions, each with an example (docs/flows.md lists the same).
#[test]
fn built_in_functions() {
    let _clock = ClockGuard::set(
        Utc.with_ymd_and_hms(2020, 10, 6, 16, 17, 44).unwrap()
            + chrono::Duration::milliseconds(727),
    );
    check(&[
        // numbers
        ("ABS(-5)", json!(5)),
        ("ABS(-2.5)", json!(2.5)),
        ("CEIL(1.2)", json!(2)),
        ("FLOOR(1.8)", json!(1)),
        ("ROUND(2.5)", json!(3)),
        ("ROUND(2.71828, 2)", json!(2.72)),
        ("PLUS(4, 2)", json!(6)),
        ("MINUS(4, 2)", json!(2)),
        ("TIMES(4, 2)", json!(8)),
        ("DIVIDED_BY(7, 2)", json!(3.5)),
        ("MODULO(7, 3)", json!(1)),
        ("AT_LEAST(4, 5)", json!(5)),
        ("AT_MOST(4, 5)", json!(4)),
        ("MAX(3, 9, 4)", json!(9)),
        ("MIN([3, 9, 4])", json!(3)),
        ("SUM([1, 2, 3])", json!(6)),
        ("AVERAGE([1, 2, 3, 4])", json!(2.5)),
        ("NUMBER('42')", json!(42)),
        // text
        ("APPEND([1, 2], 3, 4)", json!([1, 2, 3, 4])),
        ("APPEND('abc', 'def')", json!("abcdef")),
        ("PREPEND('world', 'hello ')", json!("hello world")),
        ("CAPITALIZE('hELLO world')", json!("Hello world")),
        ("DOWNCASE('Hello')", json!("hello")),
        ("UPCASE('Hello')", json!("HELLO")),
        ("STRIP('  hi  ')", json!("hi")),
        ("LSTRIP('  hi  ')", json!("hi  ")),
        ("RSTRIP('  hi  ')", json!("  hi")),
        ("REPLACE('a-b-c', '-', '+')", json!("a+b+c")),
        ("REPLACE_FIRST('a-b-c', '-', '+')", json!("a+b-c")),
        ("REMOVE('a-b-c', '-')", json!("abc")),
        ("REMOVE_FIRST('a-b-c', '-')", json!("ab-c")),
        ("SPLIT('a,b,c', ',')", json!(["a", "b", "c"])),
        ("SLICE('Chatlayer', 0, 4)", json!("Chat")),
        ("SLICE('Chatlayer', -5, 5)", json!("layer")),
        ("SLICE([1, 2, 3, 4], 1, 2)", json!([2, 3])),
        ("TRUNCATE('Hello world', 8)", json!("Hello...")),
        ("TRUNCATE('Hello world', 8, '!')", json!("Hello w!")),
        ("TRUNCATEWORDS('one two three', 2)", json!("one two...")),
        ("STARTS_WITH('+3225551212', '+32')", json!(true)),
        ("ENDS_WITH('report.pdf', '.pdf')", json!(true)),
        ("INDEX_OF('hello', 'l')", json!(2)),
        ("INDEX_OF([10, 20], 30)", json!(-1)),
        ("URL_ENCODE('a b&c')", json!("a%20b%26c")),
        ("URL_DECODE('a%20b+c')", json!("a b c")),
        ("STRING(42)", json!("42")),
        // lists
        ("SIZE([1, 2, 3])", json!(3)),
        ("LENGTH('abc')", json!(3)),
        ("FIRST([1, 2, 3])", json!(1)),
        ("LAST([1, 2, 3])", json!(3)),
        ("JOIN(['a', 'b'], ', ')", json!("a, b")),
        ("REVERSE([1, 2, 3])", json!([3, 2, 1])),
        ("REVERSE('abc')", json!("cba")),
        ("SORT([3, 1, 2])", json!([1, 2, 3])),
        ("SORT(users, 'age')[0].firstname", json!("Bob")),
        ("UNIQ([1, 1, 2])", json!([1, 2])),
        ("COMPACT([1, null, 2])", json!([1, 2])),
        ("CONCAT([1], [2, 3])", json!([1, 2, 3])),
        ("CONCAT('a', 'b', 1)", json!("ab1")),
        ("MAP(users, 'firstname')", json!(["Ann", "Bob"])),
        ("WHERE(users, 'age', 25)[0].firstname", json!("Bob")),
        ("CONTAINS('hello', 'ell')", json!(true)),
        ("CONTAINS([1, 2], 3)", json!(false)),
        // values
        ("IF(1 > 2, 'yes', 'no')", json!("no")),
        ("DEFAULT(nothing, 'n/a')", json!("n/a")),
        ("IS_EMPTY('  ')", json!(true)),
        ("TYPE([1])", json!("list")),
        ("JSON({'a': 1})", json!("{\"a\":1}")),
        ("PARSE_JSON('{\"a\": [1]}').a[0]", json!(1)),
        // dates (the clock is fixed above)
        ("NOW()", json!("2020-10-06T16:17:44.727Z")),
        ("DATE(NOW(), '%Y-%m-%d %H:%M')", json!("2020-10-06 16:17")),
        (
            "DATE('2020-10-06T16:17:44Z', '%H:%M', 'Europe/Brussels')",
            json!("18:17"),
        ),
        ("DATE('2020-10-06', '%A', '-5.5')", json!("Monday")),
        (
            "DATE_ADD('2020-10-06T16:17:44.727Z', 2, 'days')",
            json!("2020-10-08T16:17:44.727Z"),
        ),
        ("DATE_DIFF('2020-10-08', '2020-10-06', 'hours')", json!(48)),
    ]);
}

#[test]
fn function_names_ignore_case_and_keep_the_old_helpers() {
    check(&[
        ("abs(-1)", json!(1)),
        ("Downcase('A')", json!("a")),
        ("len('ab')", json!(2)),
        ("upper('a')", json!("A")),
    ]);
}

#[test]
fn reports_errors() {
    #[allow(clippy::type_complexity)]
    let cases: &[(&str, fn(&ExprError) -> bool, &str)] = &[
        (
            "1 / 0",
            |e| *e == ExprError::DivisionByZero,
            "division by zero",
        ),
        (
            "n % 0",
            |e| *e == ExprError::DivisionByZero,
            "division by zero",
        ),
        (
            "f / 0.0",
            |e| *e == ExprError::DivisionByZero,
            "division by zero",
        ),
        (
            "MODULO(1, 0)",
            |e| *e == ExprError::DivisionByZero,
            "division by zero",
        ),
        (
            "'a' - 1",
            |e| matches!(e, ExprError::Type(_)),
            "needs two numbers",
        ),
        (
            "flag + 1",
            |e| matches!(e, ExprError::Type(_)),
            "cannot add a boolean",
        ),
        (
            "-'x'",
            |e| matches!(e, ExprError::Type(_)),
            "cannot negate a string",
        ),
        (
            "flag < 1",
            |e| matches!(e, ExprError::Type(_)),
            "cannot order",
        ),
        (
            "num('abc')",
            |e| matches!(e, ExprError::Function { .. }),
            "not a number",
        ),
        (
            "len(n)",
            |e| matches!(e, ExprError::Function { .. }),
            "has no length",
        ),
        (
            "ROUND(1, 99)",
            |e| matches!(e, ExprError::Function { .. }),
            "digits",
        ),
        (
            "PARSE_JSON('{')",
            |e| matches!(e, ExprError::Function { .. }),
            "not JSON",
        ),
        (
            "DATE('tomorrow', '%Y')",
            |e| matches!(e, ExprError::Function { .. }),
            "not a date",
        ),
        (
            "DATE(NOW(), '%Y', 'Mars/Base')",
            |e| matches!(e, ExprError::Function { .. }),
            "IANA",
        ),
        (
            "DATE_ADD(NOW(), 1, 'fortnights')",
            |e| matches!(e, ExprError::Function { .. }),
            "unit",
        ),
        (
            "1e308",
            |e| matches!(e, ExprError::Syntax { .. }),
            "after the number",
        ),
        (
            "99999999999999999999",
            |e| matches!(e, ExprError::Syntax { .. }),
            "out of range",
        ),
        (
            "1 +",
            |e| matches!(e, ExprError::Syntax { .. }),
            "ends where a value",
        ),
        (
            "(1 + 2",
            |e| matches!(e, ExprError::Syntax { .. }),
            "expected `)`",
        ),
        (
            "[1, 2",
            |e| matches!(e, ExprError::Syntax { .. }),
            "in a list",
        ),
        (
            "{'a' 1}",
            |e| matches!(e, ExprError::Syntax { .. }),
            "`:` after an object key",
        ),
        (
            "users[0",
            |e| matches!(e, ExprError::Syntax { .. }),
            "expected `]`",
        ),
        ("a ? 1", |e| matches!(e, ExprError::Syntax { .. }), "`:`"),
        (
            "1 2",
            |e| matches!(e, ExprError::Syntax { .. }),
            "unexpected number",
        ),
        (
            "a = 1",
            |e| matches!(e, ExprError::Syntax { .. }),
            "use `==`",
        ),
        (
            "'open",
            |e| matches!(e, ExprError::Syntax { .. }),
            "unterminated",
        ),
        (
            "'\\q'",
            |e| matches!(e, ExprError::Syntax { .. }),
            "unknown escape",
        ),
        (
            "a..b",
            |e| matches!(e, ExprError::Syntax { .. }),
            "after `.`",
        ),
        ("a.", |e| matches!(e, ExprError::Syntax { .. }), "after `.`"),
        (
            "1 < 2 < 3",
            |e| matches!(e, ExprError::Syntax { .. }),
            "chained",
        ),
        (
            "nope(1)",
            |e| matches!(e, ExprError::Syntax { .. }),
            "unknown function",
        ),
        (
            "len(1, 2)",
            |e| matches!(e, ExprError::Syntax { .. }),
            "takes 1 argument",
        ),
        (
            "IF(1, 2)",
            |e| matches!(e, ExprError::Syntax { .. }),
            "takes 3 arguments",
        ),
        (
            "APPEND([1])",
            |e| matches!(e, ExprError::Syntax { .. }),
            "at least 2",
        ),
        (
            "and",
            |e| matches!(e, ExprError::Syntax { .. }),
            "needs a value",
        ),
        (
            "1 # 2",
            |e| matches!(e, ExprError::Syntax { .. }),
            "unexpected character",
        ),
        (
            "",
            |e| matches!(e, ExprError::Syntax { .. }),
            "ends where a value",
        ),
    ];
    for (src, is_kind, text) in cases {
        let err = run(src).expect_err(src);
        assert!(is_kind(&err), "{src}: wrong kind {err:?}");
        assert!(
            err.to_string().contains(text),
            "{src}: `{err}` lacks `{text}`"
        );
    }
}

#[test]
fn overflowing_float_is_an_error_not_infinity() {
    let big = format!("{}.0", "9".repeat(300));
    let err = run(&format!("{big} * {big}")).unwrap_err();
    assert!(matches!(err, ExprError::Overflow(_)), "{err:?}");
}

#[test]
fn values_cannot_grow_without_bound() {
    let mut vars = Map::new();
    vars.insert("s".into(), json!("x".repeat(60_000)));
    let err = Expr::parse("s + s").unwrap().eval(&vars).unwrap_err();
    assert!(matches!(err, ExprError::Overflow(_)), "{err:?}");
}

#[test]
fn syntax_errors_carry_the_column() {
    match Expr::parse("n + * 2").unwrap_err() {
        ExprError::Syntax { column, .. } => assert_eq!(column, 5),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_input_is_rejected_without_overflowing_the_stack() {
    for deep in [
        format!("{}1{}", "(".repeat(500), ")".repeat(500)),
        format!("{}1{}", "[".repeat(500), "]".repeat(500)),
        format!("a{}", "[0]".repeat(500)),
        format!("{}1", "-".repeat(200)),
        format!("{}true", "not ".repeat(200)),
        vec!["1"; 300].join(" + "),
        format!("{}1{}", "ABS(".repeat(200), ")".repeat(200)),
        format!("{}1", "true ? ".repeat(100) + &"1 : ".repeat(99)),
    ] {
        match Expr::parse(&deep) {
            Err(ExprError::TooDeep { .. }) | Err(ExprError::Syntax { .. }) => {}
            other => panic!("{}: {other:?}", &deep[..20]),
        }
    }
    let huge = "1".repeat(MAX_EXPR_LEN + 1);
    assert!(matches!(
        Expr::parse(&huge).unwrap_err(),
        ExprError::TooLong { .. }
    ));
    let ok = format!("{}1{}", "(".repeat(20), ")".repeat(20));
    assert_eq!(
        Expr::parse(&ok).unwrap().eval(&Map::new()).unwrap(),
        json!(1)
    );
}

#[test]
fn and_or_short_circuit_so_errors_on_the_dead_side_do_not_matter() {
    assert_eq!(run("false and 1 / 0").unwrap(), json!(false));
    assert_eq!(run("true or 1 / 0").unwrap(), json!(true));
    assert_eq!(
        run("true and 1 / 0").unwrap_err(),
        ExprError::DivisionByZero
    );
}

#[test]
fn var_paths_parse_and_display() {
    let p = VarPath::parse("now.utc.dayOfWeek").unwrap();
    assert_eq!(p.root(), "now");
    assert_eq!(p.to_string(), "now.utc.dayOfWeek");
    for bad in ["", "1a", "a..b", "a.", ".a", "a-b", "a b"] {
        assert!(VarPath::parse(bad).is_err(), "{bad:?}");
    }
    assert!(VarPath::parse("list.0").is_ok());
    let e = Expr::parse("IF(secrets.x, call.from, users[0].name)").unwrap();
    assert_eq!(e.roots(), vec!["secrets", "call", "users"]);
}

#[test]
fn display_and_truthiness() {
    assert_eq!(display_value(&json!(null)), "");
    assert_eq!(display_value(&json!(3.0)), "3");
    assert_eq!(display_value(&json!(3.25)), "3.25");
    assert_eq!(display_value(&json!("x")), "x");
    for (v, t) in [
        (json!(null), false),
        (json!(0), false),
        (json!(0.0), false),
        (json!(""), false),
        (json!(false), false),
        (json!("0"), true),
        (json!([]), true),
        (json!(-1), true),
    ] {
        assert_eq!(truthy(&v), t, "{v}");
    }
}
