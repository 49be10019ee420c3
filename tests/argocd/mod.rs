//! Runs the shipped Argo CD health check (`deploy/argocd/health.lua`) in a real Lua 5.1
//! interpreter (the language version Argo CD's gopher-lua implements), on an object given as
//! JSON, the way Argo CD does: the object is the global `obj`, numbers are floats, the script
//! returns a table with `status` and `message`.

#![allow(dead_code)]

use mlua::{Lua, Value};

pub const HEALTH_LUA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/argocd/health.lua");

/// Argo CD's verdict on a GpuPool: (status, message).
pub fn health(script: &str, object: &serde_json::Value) -> (String, String) {
    let lua = Lua::new();
    let obj = to_lua(&lua, object).expect("object converts to Lua");
    lua.globals().set("obj", obj).expect("set obj");
    let result: mlua::Table = lua
        .load(script)
        .set_name("health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("health.lua failed on {object}: {e}"));
    let status: String = result.get("status").expect("hs.status is a string");
    let message: String = result.get("message").unwrap_or_default();
    assert!(
        [
            "Healthy",
            "Progressing",
            "Degraded",
            "Suspended",
            "Missing",
            "Unknown"
        ]
        .contains(&status.as_str()),
        "not an Argo CD health status: {status}"
    );
    (status, message)
}

/// The shipped script, read from the repository.
pub fn shipped_script() -> String {
    std::fs::read_to_string(HEALTH_LUA).expect("deploy/argocd/health.lua is committed")
}

/// JSON to Lua as Argo CD converts it: objects and arrays become tables (arrays 1-based), numbers
/// become Lua numbers (floats), null becomes nil.
fn to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(map) => {
            let t = lua.create_table()?;
            for (k, item) in map {
                t.raw_set(k.as_str(), to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
    })
}
