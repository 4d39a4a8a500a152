use super::*;
use crate::integrations::hosts::HostPolicy;
use crate::integrations::secrets::Secrets;

fn pool(fetch: Option<Fetch>) -> ScriptPool {
    ScriptPool::new(PoolConfig {
        threads: 2,
        max_memory_kb: 65_536,
        fetch,
    })
    .unwrap()
}

fn req(source: &str, args: Value, memory_kb: u32) -> ScriptRequest {
    ScriptRequest {
        source: source.into(),
        args,
        memory_kb,
    }
}

const T: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_args_and_next_dialog() {
    let p = pool(None);
    let r = p
        .run(req("new ChatlayerResponseBuilder().setSessionVariable('total', args.a + args.b).setNextDialogState('done').send()", json!({"a": 2, "b": 3}), 16384), T)
        .await
        .unwrap();
    assert_eq!(r["session"], json!({"total": 5}));
    assert_eq!(r["nextDialogstate"], "done");
    assert_eq!(r["sent"], true);
    // Chatlayer's style: called without `new`, step by step, with messages, `_` and console.
    let src = r#"
        const b = ChatlayerResponseBuilder();
        const name = _.get(args, 'user.name', 'stranger');
        console.log('hello', name, {n: 1});
        b.addSessionVariable('greeting', { text: 'Hi ' + name });
        b.addMessage('Hello ' + name);
        b.send();
    "#;
    let r = p
        .run(req(src, json!({"user": {"name": "Ann"}}), 16384), T)
        .await
        .unwrap();
    assert_eq!(r["session"]["greeting"]["text"], "Hi Ann");
    assert_eq!(r["messages"], json!(["Hello Ann"]));
    assert_eq!(r["nextDialogstate"], Value::Null);
    assert_eq!(r["logs"], json!(["hello Ann {\"n\":1}"]));
    // Without send() nothing is applied.
    let r = p
        .run(
            req(
                "ChatlayerResponseBuilder().setSessionVariable('x', 1)",
                json!({}),
                16384,
            ),
            T,
        )
        .await
        .unwrap();
    assert_eq!(r["sent"], false);
    assert_eq!(r["session"], json!({}));
    // `args` is a copy: changing it changes nothing outside.
    let r = p
        .run(req("args.a = 99; return 1", json!({"a": 1}), 16384), T)
        .await
        .unwrap();
    assert_eq!(r["session"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_is_interrupted_at_the_deadline() {
    let p = pool(None);
    let t = Instant::now();
    let e = p
        .run(
            req("while (true) {}", json!({}), 16384),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "timeout", "{e:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // A script cannot catch the interrupt and carry on.
    let e = p
        .run(
            req(
                "for (;;) { try { while (true) {} } catch (e) {} }",
                json!({}),
                16384,
            ),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "timeout");
    // The thread is free again.
    assert!(p
        .run(
            req("ChatlayerResponseBuilder().send()", json!({}), 16384),
            T
        )
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_allocations_hit_the_memory_limit() {
    let p = pool(None);
    for src in [
        "const a = new ArrayBuffer(10 * 1024 * 1024); ChatlayerResponseBuilder().send()",
        "const s = 'x'.repeat(10 * 1024 * 1024); ChatlayerResponseBuilder().setSessionVariable('n', s.length).send()",
        "const a = []; for (let i = 0; i < 10 * 1024 * 1024; i++) a.push(i); ChatlayerResponseBuilder().send()",
    ] {
        let e = p.run(req(src, json!({}), 4096), T).await.unwrap_err();
        assert_eq!(e.code, "memory", "{src}: {e:?}");
    }
    // The same allocation within a bigger limit works.
    let r = p.run(req("const a = new ArrayBuffer(2 * 1024 * 1024); ChatlayerResponseBuilder().setSessionVariable('n', a.byteLength).send()", json!({}), 16384), T).await.unwrap();
    assert_eq!(r["session"]["n"], 2 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_and_syntax_errors_are_step_errors() {
    let p = pool(None);
    let e = p
        .run(req("throw new Error('boom')", json!({}), 16384), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "script");
    assert!(e.message.contains("Error: boom"), "{e:?}");
    let e = p
        .run(req("\n\nnull.x", json!({}), 16384), T)
        .await
        .unwrap_err();
    assert!(e.message.contains("TypeError"), "{e:?}");
    let e = p
        .run(req("this is not javascript", json!({}), 16384), T)
        .await
        .unwrap_err();
    assert!(e.message.contains("SyntaxError"), "{e:?}");
    let e = p
        .run(req("throw 'plain'", json!({}), 16384), T)
        .await
        .unwrap_err();
    assert!(e.message.contains("plain"), "{e:?}");
    let e = p
        .run(req("await new Promise(() => {})", json!({}), 16384), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "script");
    let e = p
        .run(req("function f() { return f(); } f()", json!({}), 16384), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "script", "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_filesystem_network_or_host_objects() {
    let p = pool(None);
    let src = r#"
        const seen = [typeof require, typeof process, typeof std, typeof os, typeof fetch, typeof XMLHttpRequest, typeof setTimeout, typeof import_meta];
        ChatlayerResponseBuilder().setSessionVariable('seen', seen).send()
    "#;
    let r = p.run(req(src, json!({}), 16384), T).await.unwrap();
    assert!(
        r["session"]["seen"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v == "undefined"),
        "{r}"
    );
    let e = p
        .run(req("await import('fs')", json!({}), 16384), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_goes_through_the_allow_list() {
    use axum::routing::get;
    let app =
        axum::Router::new().route("/price", get(|| async { axum::Json(json!({"price": 42})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = Arc::new(
        HttpExecutor::new(
            HostPolicy::new(&["127.0.0.1".to_string()]).unwrap(),
            Secrets::default(),
            1 << 20,
            3,
        )
        .unwrap(),
    );
    let p = pool(Some(Fetch {
        http,
        runtime: tokio::runtime::Handle::current(),
    }));
    let src = format!(
        "const r = await fetch('http://{addr}/price'); const j = await r.json(); \
         ChatlayerResponseBuilder().setSessionVariable('price', j.price).setSessionVariable('status', r.status).send()"
    );
    let r = p.run(req(&src, json!({}), 16384), T).await.unwrap();
    assert_eq!(r["session"], json!({"price": 42, "status": 200}));
    let src = format!(
        "try {{ await fetch('http://localhost:{}/price'); }} catch (e) {{ ChatlayerResponseBuilder().setSessionVariable('err', e.code).send() }}",
        addr.port()
    );
    let r = p.run(req(&src, json!({}), 16384), T).await.unwrap();
    assert_eq!(r["session"]["err"], "refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_wait_stops_the_script() {
    let p = Arc::new(pool(None));
    let p2 = p.clone();
    let h = tokio::spawn(async move {
        p2.run(
            req("while (true) {}", json!({}), 16384),
            Duration::from_secs(30),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.abort();
    // Both threads are free again soon: two scripts run at once.
    let t = Instant::now();
    let (a, b) = tokio::join!(
        p.run(
            req("ChatlayerResponseBuilder().send()", json!({}), 16384),
            T
        ),
        p.run(
            req("ChatlayerResponseBuilder().send()", json!({}), 16384),
            T
        )
    );
    assert!(a.is_ok() && b.is_ok());
    assert!(t.elapsed() < Duration::from_secs(1));
}
