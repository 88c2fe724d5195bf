//! `doctor --workflow FILE`: every node class and model file a workflow needs, and which
//! backends have them. The needs are the scheduler's own analysis
//! ([`crate::scheduler::workflow::requirements`]) on each backend's `/object_info`; a UI-format
//! workflow (`nodes`, `links`, `widgets_values`) is first read into API format with the input
//! order `/object_info` gives.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::Check;
use crate::backends::capabilities::{Capabilities, merge_object_info};
use crate::scheduler::workflow;

/// Nodes of the UI that never reach ComfyUI's executor.
const FRONTEND_ONLY: [&str; 5] = ["Note", "MarkdownNote", "Reroute", "PrimitiveNode", "GroupNode"];

/// Checks `text` (the workflow file) against `backends` (name, its `/object_info`).
pub fn check(text: &str, backends: &[(String, Capabilities)], checks: &mut Vec<Check>) {
    let name = "workflow";
    let document: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            checks.push(Check::fail(name, format!("not JSON: {e}"), "give a workflow saved from ComfyUI"));
            return;
        }
    };
    if backends.is_empty() {
        checks.push(Check::warn(name, "not checked: no backend answered /object_info", "fix the backends first"));
        return;
    }
    let merged = Capabilities::from_object_info(merge_object_info(backends.iter().map(|(_, c)| &c.raw)));
    let (format, prompt) = match api_prompt(&document, &merged) {
        Ok(found) => found,
        Err(why) => {
            let remedy = "save it with ComfyUI's \"Export\" (UI format) or \"Export (API)\"";
            checks.push(Check::fail(name, why, remedy));
            return;
        }
    };
    let classes: BTreeSet<&str> = prompt.values().filter_map(|n| n["class_type"].as_str()).collect();
    let mut missing_class = false;
    for class in &classes {
        let missing = missing_on(backends, |caps| caps.classes.contains_key(*class));
        missing_class |= missing.len() == backends.len();
        where_line(checks, format!("workflow node {class}"), "node class", &missing, backends.len());
    }
    if missing_class {
        let remedy = "install the custom node that provides it on a backend (ComfyUI-Manager, as an admin)";
        checks.push(Check::fail(
            name,
            format!("{format} format, {} nodes: a node class exists nowhere", prompt.len()),
            remedy,
        ));
        return;
    }
    let needs = match workflow::requirements(&prompt, &merged) {
        Ok(needs) => needs,
        Err(rejection) => {
            let why = rejection["error"]["message"].as_str().unwrap_or("refused").to_owned();
            checks.push(Check::fail(
                name,
                format!("{format} format: {why}"),
                "add an output node (SaveImage, PreviewImage)",
            ));
            return;
        }
    };
    for (class, input, file) in &needs.models {
        let missing = missing_on(backends, |caps| {
            caps.classes.get(class).and_then(|c| c.choices.get(input)).is_some_and(|files| files.contains(file))
        });
        where_line(checks, format!("workflow model {file}"), &format!("{class}.{input}"), &missing, backends.len());
    }
    let able: Vec<&str> =
        backends.iter().filter(|(_, caps)| needs.satisfied_by(caps)).map(|(n, _)| n.as_str()).collect();
    let summary = format!(
        "{format} format, {} nodes, {} node classes, {} model files",
        prompt.len(),
        needs.classes.len(),
        needs.models.len()
    );
    if able.is_empty() {
        let remedy = "put the missing files on one backend (each job runs on one backend)";
        checks.push(Check::fail(name, format!("{summary}: no backend has all of them"), remedy));
    } else {
        checks.push(Check::pass(name, format!("{summary}: runnable on {}", able.join(", "))));
    }
}

fn missing_on(backends: &[(String, Capabilities)], has: impl Fn(&Capabilities) -> bool) -> Vec<&str> {
    backends.iter().filter(|(_, caps)| !has(caps)).map(|(n, _)| n.as_str()).collect()
}

/// `✓` everywhere, `!` missing on some (named), `✗` nowhere.
fn where_line(checks: &mut Vec<Check>, name: String, what: &str, missing: &[&str], total: usize) {
    if missing.is_empty() {
        checks.push(Check::pass(name, format!("{what}: on every backend that answered")));
    } else if missing.len() < total {
        let remedy = "jobs needing it only run where it is; add it to the others for more capacity";
        checks.push(Check::warn(name, format!("{what}: missing on {}", missing.join(", ")), remedy));
    } else {
        let remedy = "put the file in the backend's models folder (or install the node), then refresh ComfyUI";
        checks.push(Check::fail(name, format!("{what}: on no backend"), remedy));
    }
}

/// The workflow in API format (`{"id": {"class_type", "inputs"}}`), and which format it was in.
fn api_prompt(document: &Value, known: &Capabilities) -> Result<(&'static str, Map<String, Value>), String> {
    if let Some(nodes) = document.get("nodes").and_then(Value::as_array) {
        let links = document.get("links").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        return Ok(("UI", from_ui(nodes, links, known)));
    }
    // `{"prompt": {...}}` is what a client posts; the file may be that body.
    let prompt = document.get("prompt").filter(|p| p.is_object()).unwrap_or(document);
    match prompt.as_object() {
        Some(map) if !map.is_empty() && map.values().all(|n| n.get("class_type").is_some()) => Ok(("API", map.clone())),
        _ => Err("neither API format (nodes with `class_type`) nor UI format (`nodes`, `links`)".to_owned()),
    }
}

/// A UI workflow's executable nodes with their widget values named and links resolved.
fn from_ui(nodes: &[Value], links: &[Value], known: &Capabilities) -> Map<String, Value> {
    let by_id = |id: &Value| nodes.iter().find(|n| n["id"] == *id);
    // A link's origin `[node, slot]`, through any reroutes.
    let origin = |link_id: &Value| -> Option<Value> {
        let mut link = links.iter().find(|l| l[0] == *link_id)?;
        for _ in 0..64 {
            let from = by_id(&link[1])?;
            if from["type"] != "Reroute" {
                return Some(json!([id_of(&link[1]), link[2]]));
            }
            let upstream = from["inputs"].get(0)?.get("link")?;
            link = links.iter().find(|l| l[0] == *upstream)?;
        }
        None
    };
    let mut prompt = Map::new();
    for node in nodes {
        let Some(class) = node["type"].as_str() else { continue };
        // Mode 2: muted, 4: bypassed; neither runs.
        if FRONTEND_ONLY.contains(&class) || matches!(node["mode"].as_i64(), Some(2 | 4)) {
            continue;
        }
        let mut inputs = Map::new();
        for input in node["inputs"].as_array().into_iter().flatten() {
            if let (Some(name), Some(from)) = (input["name"].as_str(), origin(&input["link"])) {
                inputs.insert(name.to_owned(), from);
            }
        }
        match (&node["widgets_values"], known.raw.get(class)) {
            (Value::Object(named), _) => {
                for (k, v) in named {
                    inputs.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            (Value::Array(values), Some(def)) => name_widgets(def, values, &mut inputs),
            _ => {}
        }
        prompt.insert(id_of(&node["id"]), json!({"class_type": class, "inputs": inputs}));
    }
    prompt
}

fn id_of(id: &Value) -> String {
    id.as_str().map_or_else(|| id.to_string(), str::to_owned)
}

/// Gives `values` the names of the class's widget inputs, in `/object_info`'s order; the
/// frontend adds a value after a seed (`control_after_generate`) and after an upload choice.
fn name_widgets(def: &Value, values: &[Value], inputs: &mut Map<String, Value>) {
    let mut values = values.iter();
    for section in ["required", "optional"] {
        for (name, spec) in def["input"][section].as_object().into_iter().flatten() {
            let kind = &spec[0];
            let options = &spec[1];
            let is_widget = kind.is_array()
                || matches!(kind.as_str(), Some("INT" | "FLOAT" | "STRING" | "BOOLEAN" | "COMBO"))
                    && options["forceInput"] != true;
            if !is_widget {
                continue;
            }
            let Some(value) = values.next() else { return };
            inputs.entry(name.clone()).or_insert_with(|| value.clone());
            let seeded =
                kind == "INT" && (options["control_after_generate"] == true || name == "seed" || name == "noise_seed");
            if seeded || options["image_upload"] == true {
                values.next();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caps(models: &[&str]) -> Capabilities {
        Capabilities::from_object_info(json!({
            "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [models, {}]}}, "output_node": false},
            "KSampler": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"control_after_generate": true}],
                "steps": ["INT", {}], "sampler_name": [["euler"], {}]}}, "output_node": false},
            "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}}, "output_node": true},
        }))
    }

    fn ui() -> Value {
        json!({
            "nodes": [
                {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [], "widgets_values": ["sd15.safetensors"]},
                {"id": 5, "type": "Reroute", "inputs": [{"name": "", "link": 10}]},
                {"id": 2, "type": "KSampler", "mode": 0, "inputs": [{"name": "model", "link": 11}],
                 "widgets_values": [42, "randomize", 20, "euler"]},
                {"id": 3, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "link": 12}], "widgets_values": ["x"]},
                {"id": 4, "type": "Note", "widgets_values": ["hello"]},
                {"id": 6, "type": "CheckpointLoaderSimple", "mode": 4, "inputs": [], "widgets_values": ["muted.safetensors"]}
            ],
            "links": [[10, 1, 0, 5, 0, "MODEL"], [11, 5, 0, 2, 0, "MODEL"], [12, 2, 0, 3, 0, "IMAGE"]]
        })
    }

    #[test]
    fn a_ui_workflow_is_read_with_widget_names_from_object_info_through_reroutes() {
        let (format, prompt) = api_prompt(&ui(), &caps(&["sd15.safetensors"])).unwrap();
        assert_eq!(format, "UI");
        assert_eq!(prompt.keys().collect::<Vec<_>>(), ["1", "2", "3"], "notes, reroutes and bypassed nodes dropped");
        assert_eq!(prompt["2"]["inputs"], json!({"model": ["1", 0], "seed": 42, "steps": 20, "sampler_name": "euler"}));
        let needs = workflow::requirements(&prompt, &caps(&[])).unwrap();
        assert_eq!(needs.model_files().into_iter().collect::<Vec<_>>(), ["sd15.safetensors"]);
    }

    #[test]
    fn a_missing_file_is_named_with_where_it_is_missing() {
        let backends = vec![("a".to_owned(), caps(&["sd15.safetensors"])), ("b".to_owned(), caps(&[]))];
        let mut checks = Vec::new();
        check(&ui().to_string(), &backends, &mut checks);
        let model = checks.iter().find(|c| c.name == "workflow model sd15.safetensors").unwrap();
        assert_eq!(model.detail, "CheckpointLoaderSimple.ckpt_name: missing on b");
        let summary = checks.iter().find(|c| c.name == "workflow").unwrap();
        assert!(summary.detail.ends_with("runnable on a"), "{summary:?}");

        let mut checks = Vec::new();
        check(&ui().to_string(), &backends[1..], &mut checks);
        let model = checks.iter().find(|c| c.name == "workflow model sd15.safetensors").unwrap();
        assert_eq!(
            (model.status, model.detail.as_str()),
            (super::super::Status::Fail, "CheckpointLoaderSimple.ckpt_name: on no backend")
        );
    }

    #[test]
    fn an_unknown_class_is_named() {
        let api =
            json!({"1": {"class_type": "FancyNode", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {}}});
        let mut checks = Vec::new();
        check(&api.to_string(), &[("a".to_owned(), caps(&[]))], &mut checks);
        let line = checks.iter().find(|c| c.name == "workflow node FancyNode").unwrap();
        assert_eq!(line.detail, "node class: on no backend");
        assert!(checks.iter().any(|c| c.name == "workflow" && c.status == super::super::Status::Fail));
    }
}
