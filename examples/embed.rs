//! Embedding Skiff in a Rust program: limits, typed host functions, compile, call.
//!
//! Run with `cargo run --example embed`. `tests/examples.rs` runs it too.

use skiff::{Engine, Limits, Portable};

pub fn main() -> Result<(), skiff::Error> {
    // Every execution of this engine gets at most 10 million instructions and 64 MiB.
    let limits = Limits {
        fuel: Some(10_000_000),
        max_heap: Some(64 << 20),
        ..Limits::default()
    };
    let mut engine = Engine::new(limits);

    // Host functions are plain closures; argument and result types convert automatically.
    engine.register_fn("celsius", |f: f64| (f - 32.0) * 5.0 / 9.0);
    engine.register_fn("lookup", |key: String| match key.as_str() {
        "oslo" => Ok(41.0),
        "lima" => Ok(66.2),
        _ => Err(format!("no reading for {key}")),
    });

    let module = engine.compile(
        r#"
        fn report(cities) {
          let out = {}
          for c in cities { out[c] = round(celsius(lookup(c))) }
          out
        }
        fn safe(city) { try { report([city]) } catch e { e.message } }
        "#,
        "weather.skiff",
    )?;

    let cities = vec!["oslo", "lima"];
    let report: Portable = engine.call(&module, "report", (cities,))?;
    println!("report: {report:?}");
    let expected = Portable::Map(vec![
        (Portable::Str("oslo".into()), Portable::Int(5)),
        (Portable::Str("lima".into()), Portable::Int(19)),
    ]);
    assert_eq!(report, expected);
    let message: String = engine.call(&module, "safe", ("atlantis",))?;
    println!("safe: {message}");
    assert_eq!(message, "no reading for atlantis");
    Ok(())
}
