//! Reading a submitted workflow: which node classes and model files it needs, which of its
//! nodes are outputs, and ComfyUI-format validation errors against known capabilities.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::{Map, Value, json};

use crate::backends::capabilities::{Capabilities, NodeClass, is_model_input};

/// What a workflow needs from a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Requirements {
    /// Node classes used by nodes that feed an output.
    pub classes: BTreeSet<String>,
    /// `(class, input, file)` for every model file chosen.
    pub models: BTreeSet<(String, String, String)>,
    /// Files chosen from the input folder (`LoadImage`), which must be on the backend.
    pub input_files: BTreeSet<String>,
    /// Ids of output nodes (ComfyUI's `outputs_to_execute`).
    pub outputs: Vec<String>,
}

impl Requirements {
    /// The model files alone (for checkpoint affinity).
    pub fn model_files(&self) -> BTreeSet<String> {
        self.models.iter().map(|(_, _, file)| file.clone()).collect()
    }

    /// Whether a backend with `caps` can run this.
    pub fn satisfied_by(&self, caps: &Capabilities) -> bool {
        self.classes.iter().all(|c| caps.classes.contains_key(c))
            && self.models.iter().all(|(class, input, file)| {
                caps.classes.get(class).and_then(|c| c.choices.get(input)).is_some_and(|v| v.iter().any(|x| x == file))
            })
    }
}

/// A workflow that cannot run anywhere, as ComfyUI's 400 body.
pub type Rejection = Value;

fn node_error(kind: &str, message: &str, details: &str) -> Value {
    json!({"type": kind, "message": message, "details": details, "extra_info": {}})
}

fn reject(kind: &str, message: &str, details: &str) -> Rejection {
    json!({"error": node_error(kind, message, details), "node_errors": {}})
}

/// Checks a workflow against the union of what the backends can do (`known`) and returns what
/// it needs; `Err` is ComfyUI's own 400 answer for the same workflow.
pub fn analyse(prompt: &Map<String, Value>, known: &Capabilities) -> Result<Requirements, Rejection> {
    let (req, errors) = collect(prompt, known)?;
    if errors.is_empty() { Ok(req) } else { Err(validation_failure(prompt, errors)) }
}

/// What `prompt` needs, and the errors of the nodes whose inputs `known` refuses.
fn collect(prompt: &Map<String, Value>, known: &Capabilities) -> Result<(Requirements, NodeErrors), Rejection> {
    for (id, node) in prompt {
        let Some(class) = node.get("class_type").and_then(Value::as_str) else {
            return Err(reject(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                &format!("Node ID '#{id}'"),
            ));
        };
        if !known.classes.contains_key(class) {
            return Err(reject(
                "invalid_prompt",
                &format!("Cannot execute because node {class} does not exist."),
                &format!("Node ID '#{id}'"),
            ));
        }
    }
    let class_of = |id: &str| prompt.get(id).and_then(|n| n["class_type"].as_str()).unwrap_or_default().to_owned();
    let outputs: Vec<String> =
        prompt.keys().filter(|id| known.classes.get(&class_of(id)).is_some_and(|c| c.output_node)).cloned().collect();
    if outputs.is_empty() {
        return Err(reject("prompt_no_outputs", "Prompt has no outputs", ""));
    }

    let mut req = Requirements { outputs: outputs.clone(), ..Requirements::default() };
    let mut errors = NodeErrors::new();
    for output in &outputs {
        let mut seen = HashSet::new();
        let mut stack = vec![output.clone()];
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(node) = prompt.get(&id) else { continue };
            let class_name = class_of(&id);
            let Some(class) = known.classes.get(&class_name) else { continue };
            req.classes.insert(class_name.clone());
            let inputs = node.get("inputs").and_then(Value::as_object);
            let node_errors = check_node(&class_name, class, inputs, &mut req);
            if !node_errors.is_empty() {
                let entry = errors.entry(id.clone()).or_default();
                if entry.0.is_empty() {
                    entry.0 = node_errors;
                }
                entry.1.insert(output.clone());
            }
            for value in inputs.into_iter().flat_map(|m| m.values()) {
                if let Some(linked) = link_target(value) {
                    stack.push(linked);
                }
            }
        }
    }
    Ok((req, errors))
}

/// What a workflow needs, whether or not the chosen files exist anywhere (`comfygate doctor`
/// names what is missing where); `Err` only for an unknown class or no output.
pub fn requirements(prompt: &Map<String, Value>, known: &Capabilities) -> Result<Requirements, Rejection> {
    collect(prompt, known).map(|(req, _)| req)
}

type NodeErrors = BTreeMap<String, (Vec<Value>, BTreeSet<String>)>;

fn validation_failure(prompt: &Map<String, Value>, errors: NodeErrors) -> Rejection {
    let class_of = |id: &str| prompt.get(id).and_then(|n| n["class_type"].as_str()).unwrap_or_default().to_owned();
    let node_errors: Map<String, Value> = errors
        .into_iter()
        .map(|(id, (errs, deps))| {
            let class_type = class_of(&id);
            (id, json!({"errors": errs, "dependent_outputs": deps.into_iter().collect::<Vec<_>>(), "class_type": class_type}))
        })
        .collect();
    json!({
        "error": node_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", ""),
        "node_errors": node_errors,
    })
}

/// `["4", 0]` links to node "4".
pub fn link_target(value: &Value) -> Option<String> {
    let list = value.as_array()?;
    if list.len() != 2 || !list[1].is_number() {
        return None;
    }
    match &list[0] {
        Value::String(id) => Some(id.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn check_node(
    class_name: &str,
    class: &NodeClass,
    inputs: Option<&Map<String, Value>>,
    req: &mut Requirements,
) -> Vec<Value> {
    let mut errors = Vec::new();
    for name in &class.required {
        if inputs.is_none_or(|m| !m.contains_key(name)) {
            errors.push(json!({"type": "required_input_missing", "message": "Required input is missing",
                "details": name, "extra_info": {"input_name": name}}));
        }
    }
    for (name, value) in inputs.into_iter().flatten() {
        let Some(allowed) = class.choices.get(name) else { continue };
        let Some(chosen) = value.as_str() else { continue };
        if name == "image" && class_name.starts_with("LoadImage") {
            req.input_files.insert(chosen.to_owned());
            continue;
        }
        if !is_model_input(name) {
            continue;
        }
        req.models.insert((class_name.to_owned(), name.clone(), chosen.to_owned()));
        if !allowed.iter().any(|a| a == chosen) {
            let (list, config) = if allowed.len() > 20 {
                (format!("(list of length {})", allowed.len()), Value::Null)
            } else {
                (python_list(allowed), class.choice_specs.get(name).cloned().unwrap_or(Value::Null))
            };
            errors.push(json!({"type": "value_not_in_list", "message": "Value not in list",
                "details": format!("{name}: '{chosen}' not in {list}"),
                "extra_info": {"input_name": name, "input_config": config, "received_value": chosen}}));
        }
    }
    errors
}

/// A list of strings as Python prints it (`['a', 'b']`), as ComfyUI's messages do.
fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> =
        items.iter().map(|s| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(models: &[&str]) -> Capabilities {
        Capabilities::from_object_info(json!({
            "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [models, {}]}}, "output_node": false},
            "EmptyImage": {"input": {"required": {"width": ["INT", {}], "height": ["INT", {}]}}, "output_node": false},
            "LoadImage": {"input": {"required": {"image": [["example.png"], {}]}}, "output_node": false},
            "SaveImage": {"input": {"required": {"images": ["IMAGE", {}]}}, "output_node": true},
        }))
    }

    fn prompt(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn requirements_follow_links_from_outputs() {
        let p = prompt(json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux.safetensors"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "other": ["1", 0]}},
            "9": {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1}},
        }));
        let req = analyse(&p, &caps(&["flux.safetensors"])).unwrap_or_default();
        assert_eq!(req.outputs, ["3"]);
        assert_eq!(req.model_files().into_iter().collect::<Vec<_>>(), ["flux.safetensors"]);
        assert!(req.input_files.contains("cat.png"));
        assert!(!req.classes.contains("EmptyImage"), "node 9 feeds no output");
        assert!(req.satisfied_by(&caps(&["flux.safetensors"])));
        assert!(!req.satisfied_by(&caps(&["sd15.safetensors"])));
    }

    #[test]
    fn unknown_classes_and_missing_outputs_are_comfyui_errors() {
        let e = analyse(&prompt(json!({"1": {"class_type": "Nope", "inputs": {}}})), &caps(&[])).unwrap_err();
        assert_eq!(e["error"]["type"], "invalid_prompt");
        assert_eq!(e["error"]["message"], "Cannot execute because node Nope does not exist.");
        assert_eq!(e["error"]["details"], "Node ID '#1'");
        let e = analyse(
            &prompt(json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1}}})),
            &caps(&[]),
        )
        .unwrap_err();
        assert_eq!(e["error"]["type"], "prompt_no_outputs");
    }

    #[test]
    fn missing_model_files_and_inputs_name_the_node() {
        let p = prompt(json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "Qwen-Image-Edit.safetensors"}},
            "2": {"class_type": "SaveImage", "inputs": {"x": ["1", 0]}},
        }));
        let e = analyse(&p, &caps(&["a.safetensors"])).unwrap_err();
        assert_eq!(e["error"]["type"], "prompt_outputs_failed_validation");
        let n1 = &e["node_errors"]["1"];
        assert_eq!(n1["class_type"], "CheckpointLoaderSimple");
        assert_eq!(n1["dependent_outputs"], json!(["2"]));
        assert_eq!(n1["errors"][0]["type"], "value_not_in_list");
        assert_eq!(n1["errors"][0]["details"], "ckpt_name: 'Qwen-Image-Edit.safetensors' not in ['a.safetensors']");
        assert_eq!(e["node_errors"]["2"]["errors"][0]["type"], "required_input_missing");
    }
}
