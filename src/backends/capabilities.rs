//! What a backend can run: its node classes and the model files its loaders list, read from
//! ComfyUI's `/object_info`.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// One node class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeClass {
    /// Whether it is an output node (SaveImage, PreviewImage ...).
    pub output_node: bool,
    /// Required input names.
    pub required: Vec<String>,
    /// Choice inputs and their allowed values (model files for loaders).
    pub choices: HashMap<String, Vec<String>>,
    /// The raw spec of every choice input (`[list, options]`), for ComfyUI-style errors.
    pub choice_specs: HashMap<String, Value>,
}

/// A backend's capabilities.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Node classes by name.
    pub classes: HashMap<String, NodeClass>,
    /// The `/object_info` document itself (merged into the gateway's answer).
    pub raw: Value,
}

/// Whether an input names a model file (`ckpt_name`, `lora_name`, `clip_name1` ...); the
/// sampler's `sampler_name` is the one `*_name` choice that is not a file.
pub fn is_model_input(name: &str) -> bool {
    name.contains("_name") && name != "sampler_name"
}

impl Capabilities {
    /// Parses `/object_info`; classes with a shape it cannot read are skipped.
    pub fn from_object_info(raw: Value) -> Self {
        let mut classes = HashMap::new();
        if let Some(map) = raw.as_object() {
            for (name, def) in map {
                classes.insert(name.clone(), parse_class(def));
            }
        }
        Self { classes, raw }
    }

    /// Model files this backend has, over all loaders.
    pub fn model_files(&self) -> BTreeSet<&str> {
        self.classes
            .values()
            .flat_map(|c| c.choices.iter())
            .filter(|(input, _)| is_model_input(input))
            .flat_map(|(_, values)| values.iter().map(String::as_str))
            .collect()
    }
}

fn parse_class(def: &Value) -> NodeClass {
    let mut class = NodeClass { output_node: def["output_node"].as_bool().unwrap_or(false), ..NodeClass::default() };
    for section in ["required", "optional"] {
        let Some(inputs) = def["input"][section].as_object() else { continue };
        for (input, spec) in inputs {
            if section == "required" {
                class.required.push(input.clone());
            }
            if let Some(values) = choice_values(spec) {
                class.choices.insert(input.clone(), values);
                class.choice_specs.insert(input.clone(), spec.clone());
            }
        }
    }
    class
}

/// The allowed values of a choice input: `[[...], {...}]` or `["COMBO", {"options": [...]}]`.
fn choice_values(spec: &Value) -> Option<Vec<String>> {
    let list = match &spec[0] {
        Value::Array(list) => list,
        Value::String(kind) if kind == "COMBO" => spec[1]["options"].as_array()?,
        _ => return None,
    };
    Some(list.iter().map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())).collect())
}

/// Merges several backends' `/object_info` into one: every class any of them has, with the
/// union of choice values (model files) per input.
pub fn merge_object_info<'a>(all: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut merged = serde_json::Map::new();
    for raw in all {
        let Some(classes) = raw.as_object() else { continue };
        for (name, def) in classes {
            match merged.get_mut(name) {
                None => {
                    merged.insert(name.clone(), def.clone());
                }
                Some(existing) => merge_choices(existing, def),
            }
        }
    }
    Value::Object(merged)
}

fn merge_choices(into: &mut Value, from: &Value) {
    for section in ["required", "optional"] {
        let Some(inputs) = from["input"][section].as_object() else { continue };
        for (input, spec) in inputs {
            let Some(extra) = choice_values(spec) else { continue };
            let target = &mut into["input"][section][input];
            let list = match target.get_mut(0) {
                Some(Value::Array(list)) => list,
                Some(Value::String(kind)) if kind == "COMBO" => {
                    match target.get_mut(1).and_then(|o| o.get_mut("options")).and_then(Value::as_array_mut) {
                        Some(list) => list,
                        None => continue,
                    }
                }
                _ => continue,
            };
            for value in extra {
                if !list.iter().any(|v| v.as_str() == Some(value.as_str())) {
                    list.push(Value::String(value));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(ckpts: &[&str]) -> Value {
        json!({
            "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [ckpts, {"tooltip": "t"}]}}, "output_node": false},
            "UNETLoader": {"input": {"required": {"unet_name": ["COMBO", {"options": ckpts}]}}, "output_node": false},
            "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}}, "output_node": true},
        })
    }

    #[test]
    fn parses_classes_required_inputs_and_both_choice_styles() {
        let caps = Capabilities::from_object_info(info(&["a.safetensors"]));
        assert!(caps.classes["SaveImage"].output_node);
        assert_eq!(caps.classes["SaveImage"].required.len(), 2);
        assert_eq!(caps.classes["CheckpointLoaderSimple"].choices["ckpt_name"], ["a.safetensors"]);
        assert_eq!(caps.classes["UNETLoader"].choices["unet_name"], ["a.safetensors"]);
        assert_eq!(caps.model_files().into_iter().collect::<Vec<_>>(), ["a.safetensors"]);
    }

    #[test]
    fn merging_unions_model_lists() {
        let merged = merge_object_info([&info(&["a"]), &info(&["b", "a"])]);
        assert_eq!(merged["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0], json!(["a", "b"]));
        assert_eq!(merged["UNETLoader"]["input"]["required"]["unet_name"][1]["options"], json!(["a", "b"]));
    }

    #[test]
    fn model_inputs_are_files_not_samplers() {
        for name in ["ckpt_name", "lora_name", "clip_name2", "unet_name", "control_net_name"] {
            assert!(is_model_input(name), "{name}");
        }
        for name in ["sampler_name", "scheduler", "image", "text"] {
            assert!(!is_model_input(name), "{name}");
        }
    }

    #[test]
    fn the_real_fixture_parses() {
        let raw: Value = serde_json::from_str(include_str!("../../sim/fixtures/object_info.json")).unwrap_or_default();
        let caps = Capabilities::from_object_info(raw);
        assert!(caps.classes.len() > 400);
        assert!(caps.classes.contains_key("KSampler"));
        assert!(caps.classes["LoadImage"].choices.contains_key("image"));
    }
}
