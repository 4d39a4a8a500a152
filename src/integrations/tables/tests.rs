use super::*;
use crate::flow::{TableOp, TableRequest};

fn seeded() -> (TableStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vip.csv"),
        "number,name,tier\n+3225550001,Ann,gold\n+3225550002,Bob,silver\n\"+3225550003\",\"O'Brien, Cy\",gold\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("callbacks.csv"), "number,when\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let store = TableStore::in_memory().unwrap();
    let report = store.seed_dir(dir.path(), false).unwrap();
    assert_eq!(
        report,
        vec![("callbacks".to_string(), 0), ("vip".to_string(), 3)]
    );
    (store, dir)
}

fn req(
    op: TableOp,
    table: &str,
    filter: Vec<(&str, Value)>,
    values: Vec<(&str, Value)>,
) -> TableRequest {
    TableRequest {
        op,
        table: table.into(),
        filter: filter
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        values: values
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

#[test]
fn lookup_insert_update_delete() {
    let (s, _d) = seeded();
    let r = s
        .run(&req(
            TableOp::Lookup,
            "vip",
            vec![("number", json!("+3225550003"))],
            vec![],
        ))
        .unwrap();
    assert_eq!(r["count"], 1);
    assert_eq!(r["row"]["name"], "O'Brien, Cy");
    assert_eq!(r["row"]["_id"], 3);
    let r = s
        .run(&req(
            TableOp::Lookup,
            "vip",
            vec![("tier", json!("gold"))],
            vec![],
        ))
        .unwrap();
    assert_eq!(r["count"], 2);
    assert_eq!(r["row"]["name"], "Ann", "the first match, oldest first");
    let r = s
        .run(&req(
            TableOp::Lookup,
            "vip",
            vec![("number", json!("+1"))],
            vec![],
        ))
        .unwrap();
    assert_eq!(r, json!({"row": null, "count": 0}));

    let r = s
        .run(&req(
            TableOp::Insert,
            "callbacks",
            vec![],
            vec![("number", json!("+3225550009")), ("when", json!(1700))],
        ))
        .unwrap();
    assert_eq!(r, json!({"inserted": 1, "id": 1}));
    // Numbers are stored and compared as text.
    let r = s
        .run(&req(
            TableOp::Lookup,
            "callbacks",
            vec![("when", json!(1700))],
            vec![],
        ))
        .unwrap();
    assert_eq!(r["row"]["when"], "1700");

    let r = s
        .run(&req(
            TableOp::Update,
            "vip",
            vec![("tier", json!("gold"))],
            vec![("tier", json!("platinum"))],
        ))
        .unwrap();
    assert_eq!(r, json!({"affected": 2}));
    let r = s
        .run(&req(
            TableOp::Delete,
            "vip",
            vec![("name", json!("Bob"))],
            vec![],
        ))
        .unwrap();
    assert_eq!(r, json!({"affected": 1}));
    let infos = s.tables().unwrap();
    assert_eq!(infos.iter().find(|t| t.name == "vip").unwrap().rows, 2);
    assert!(infos.iter().all(|t| !t.name.starts_with("_voxgate")));
}

#[test]
fn caller_typed_injection_finds_nothing_and_changes_nothing() {
    let (s, _d) = seeded();
    for evil in [
        "' OR 1=1 --",
        "\" OR \"1\"=\"1",
        "x'; DROP TABLE vip; --",
        "%",
    ] {
        let r = s
            .run(&req(
                TableOp::Lookup,
                "vip",
                vec![("number", json!(evil))],
                vec![],
            ))
            .unwrap();
        assert_eq!(r, json!({"row": null, "count": 0}), "{evil}");
        let r = s
            .run(&req(
                TableOp::Delete,
                "vip",
                vec![("number", json!(evil))],
                vec![],
            ))
            .unwrap();
        assert_eq!(r["affected"], 0);
    }
    // Hostile identifiers never reach SQL.
    for (table, col) in [
        ("vip; DROP TABLE vip", "number"),
        ("vip", "number\" OR 1=1 --"),
        ("sqlite_master", "name"),
        ("_voxgate_seeds", "name"),
        ("vip", "nope"),
    ] {
        let e = s
            .run(&req(
                TableOp::Lookup,
                table,
                vec![(col, json!("x"))],
                vec![],
            ))
            .unwrap_err();
        assert_eq!(e.code, "table", "{table} {col}");
    }
    assert_eq!(s.find("vip", &[], 10, 0).unwrap().1, 3);
}

#[test]
fn refuses_unbounded_update_and_delete_and_missing_tables() {
    let (s, _d) = seeded();
    assert!(s.run(&req(TableOp::Delete, "vip", vec![], vec![])).is_err());
    assert!(s
        .run(&req(
            TableOp::Update,
            "vip",
            vec![],
            vec![("tier", json!("x"))]
        ))
        .is_err());
    assert!(s.run(&req(TableOp::Insert, "vip", vec![], vec![])).is_err());
    let e = s
        .run(&req(TableOp::Insert, "nope", vec![], vec![("a", json!(1))]))
        .unwrap_err();
    assert!(e.message.contains("no table `nope`"), "{e:?}");
    assert_eq!(s.find("vip", &[], 10, 0).unwrap().1, 3);
}

#[test]
fn seeding_once_unless_reseed_and_bad_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.sqlite3");
    let csvs = dir.path().join("tables");
    std::fs::create_dir_all(&csvs).unwrap();
    std::fs::write(csvs.join("vip.csv"), "number,name\n+1,A\n").unwrap();
    {
        let s = TableStore::open(&db).unwrap();
        assert_eq!(
            s.seed_dir(&csvs, false).unwrap(),
            vec![("vip".to_string(), 1)]
        );
        s.insert("vip", &[("number".into(), json!("+2"))]).unwrap();
    }
    // Restart: rows added at run time survive; the CSV is not re-applied.
    let s = TableStore::open(&db).unwrap();
    assert_eq!(s.seed_dir(&csvs, false).unwrap(), vec![]);
    assert_eq!(s.find("vip", &[], 10, 0).unwrap().1, 2);
    std::fs::write(
        csvs.join("vip.csv"),
        "number,name,tier\n+1,A,gold\n+3,C,silver\n+4,D,gold\n",
    )
    .unwrap();
    assert_eq!(
        s.seed_dir(&csvs, true).unwrap(),
        vec![("vip".to_string(), 3)]
    );
    assert_eq!(s.columns("vip").unwrap(), vec!["number", "name", "tier"]);

    for (file, text, want) in [
        ("bad-name.csv", "a\n1\n", "not a valid table name"),
        ("dup.csv", "a,A\n1,2\n", "appears twice"),
        ("ragged.csv", "a,b\n1\n", "row 2"),
        ("badcol.csv", "a,b c\n1,2\n", "not a valid name"),
    ] {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(file), text).unwrap();
        let e = TableStore::in_memory()
            .unwrap()
            .seed_dir(d.path(), false)
            .unwrap_err();
        assert!(
            e.to_string().contains(want) && e.to_string().contains(file),
            "{file}: {e}"
        );
    }
    assert_eq!(
        TableStore::in_memory()
            .unwrap()
            .seed_dir(&dir.path().join("missing"), false)
            .unwrap(),
        vec![]
    );
}

#[test]
fn row_api_helpers() {
    let s = TableStore::in_memory().unwrap();
    s.create_table("notes", &["text".into(), "order".into()])
        .unwrap();
    assert!(matches!(
        s.create_table("notes", &["x".into()]),
        Err(TableError::Exists(_))
    ));
    assert!(s.create_table("x", &["_id".into()]).is_err());
    let id = s
        .insert(
            "notes",
            &[("text".into(), json!("hi")), ("order".into(), json!(2))],
        )
        .unwrap();
    assert_eq!(
        s.get_row("notes", id).unwrap(),
        json!({"_id": id, "text": "hi", "order": "2"})
    );
    s.update_row("notes", id, &[("text".into(), json!("bye"))])
        .unwrap();
    assert_eq!(s.get_row("notes", id).unwrap()["text"], "bye");
    assert!(matches!(
        s.update_row("notes", 99, &[("text".into(), json!("x"))]),
        Err(TableError::UnknownRow { .. })
    ));
    s.delete_row("notes", id).unwrap();
    assert!(s.get_row("notes", id).is_err());
    s.drop_table("notes").unwrap();
    assert!(s.tables().unwrap().is_empty());
    assert_eq!(
        object_pairs(&json!({"_id": 1, "a": 2})).unwrap(),
        vec![("a".to_string(), json!(2))]
    );
    assert!(object_pairs(&json!([1])).is_err());
}
