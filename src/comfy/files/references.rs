//! Files named inside workflows and node lists: a workflow may only use the caller's own
//! uploads and outputs, and the file lists of `/object_info` (LoadImage and friends) show the
//! caller's own files only. Uploads are named by users relative to their own folder; the
//! workflow ComfyUI receives names the real file.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::names::{Kind, UserFile, join, user_view_of};
use crate::http::Caller;
use crate::scheduler::workflow::link_target;
use crate::state::AppState;
use crate::store::StoreError;

/// Most files listed per folder in a user's node lists.
const LISTED_FILES: i64 = 2000;

/// A file input of a node class: its name and the folder its values name by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInput {
    /// The input's name (`image`, `file`, `model_file`).
    pub name: String,
    /// `input`, or `output` for `image_folder: "output"`.
    pub folder: Kind,
}

/// The file inputs of a class as `/object_info` describes it: choice inputs flagged for
/// uploads (`image_upload`, `video_upload`, `file_upload` ...). Without a description,
/// ComfyUI's own `LoadImage*` classes are assumed to read `image` from the input folder.
pub fn file_inputs(class_name: &str, definition: Option<&Value>) -> Vec<FileInput> {
    let Some(definition) = definition else {
        return if class_name.starts_with("LoadImage") {
            vec![FileInput { name: "image".to_owned(), folder: Kind::Input }]
        } else {
            Vec::new()
        };
    };
    let mut found = Vec::new();
    for section in ["required", "optional"] {
        let Some(inputs) = definition["input"][section].as_object() else { continue };
        for (name, spec) in inputs {
            let Some(options) = spec.get(1).and_then(Value::as_object) else { continue };
            let upload = options.iter().any(|(k, v)| k.ends_with("_upload") && v.as_bool() == Some(true));
            if upload {
                let folder = if options.get("image_folder").and_then(Value::as_str) == Some("output") {
                    Kind::Output
                } else {
                    Kind::Input
                };
                found.push(FileInput { name: name.clone(), folder });
            }
        }
    }
    found
}

/// Rewrites a submitted workflow's file inputs to the files they name for `caller` (uploads
/// are in the caller's folder); `Err` is ComfyUI's 400 body when a node names a file that is
/// not the caller's (or not a valid name).
pub async fn bind_workflow(app: &AppState, caller: &Caller, prompt: &mut Map<String, Value>) -> Result<(), Value> {
    let known = app.scheduler.pool().known_capabilities(crate::backends::Reach::Any);
    let raw = known.as_ref().map(|k| &k.raw);
    let me = caller.identity.user_id;
    let mut errors: Vec<(String, String, Value)> = Vec::new();
    for (id, node) in prompt.iter_mut() {
        let class = node["class_type"].as_str().unwrap_or_default().to_owned();
        let definition = raw.and_then(|r| r.get(&class));
        for input in file_inputs(&class, definition) {
            let Some(Value::String(value)) = node.get("inputs").and_then(|i| i.get(&input.name)).cloned() else {
                continue;
            };
            let bound = match UserFile::from_input_value(&value, input.folder) {
                Err(_) => None,
                Ok(file) => {
                    let located = file.located_for(me);
                    let allowed = match file.kind {
                        Kind::Input => true,
                        Kind::Output | Kind::Temp => {
                            let access = super::access(app, caller, &located).await;
                            matches!(access, Ok(super::Access::Recorded(_) | super::Access::Unrecorded))
                        }
                    };
                    let annotate = value.ends_with(']') && value.contains(" [");
                    allowed.then(|| located.input_value(annotate || file.kind != input.folder))
                }
            };
            match bound {
                Some(real) => node["inputs"][&input.name] = Value::String(real),
                None => {
                    let spec = definition.map(|d| input_spec(d, &input.name)).unwrap_or(Value::Null);
                    errors.push((id.clone(), class.clone(), invalid_file(&input.name, &value, spec)));
                }
            }
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let outputs: Vec<String> = prompt
        .iter()
        .filter(|(_, n)| {
            let class = n["class_type"].as_str().unwrap_or_default();
            raw.and_then(|r| r[class]["output_node"].as_bool()).unwrap_or(false)
        })
        .map(|(id, _)| id.clone())
        .collect();
    let mut node_errors = Map::new();
    for (id, class, error) in errors {
        let dependents: Vec<&String> = outputs.iter().filter(|out| depends_on(prompt, out, &id)).collect();
        let entry = node_errors
            .entry(id)
            .or_insert_with(|| json!({"errors": [], "dependent_outputs": dependents, "class_type": class}));
        if let Some(list) = entry["errors"].as_array_mut() {
            list.push(error);
        }
    }
    Err(json!({
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
            "details": "", "extra_info": {}},
        "node_errors": node_errors,
    }))
}

/// ComfyUI's error for a file input its node cannot read (`LoadImage`'s own words).
fn invalid_file(input: &str, value: &str, spec: Value) -> Value {
    json!({"type": "custom_validation_failed", "message": "Custom validation failed for node",
        "details": format!("{input} - Invalid image file: {value}"),
        "extra_info": {"input_name": input, "input_config": spec, "received_value": value}})
}

fn input_spec(definition: &Value, input: &str) -> Value {
    ["required", "optional"]
        .iter()
        .find_map(|section| definition["input"][section].get(input).cloned())
        .unwrap_or(Value::Null)
}

/// Whether node `output` (transitively) takes input from node `id`.
fn depends_on(prompt: &Map<String, Value>, output: &str, id: &str) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![output.to_owned()];
    while let Some(node) = stack.pop() {
        if node == id {
            return true;
        }
        if !seen.insert(node.clone()) {
            continue;
        }
        let inputs = prompt.get(&node).and_then(|n| n.get("inputs")).and_then(Value::as_object);
        stack.extend(inputs.into_iter().flat_map(|m| m.values()).filter_map(link_target));
    }
    false
}

/// `/object_info` as `caller` sees it: every file list of an upload input holds the caller's
/// own files (named as the caller names them), and nobody else's.
pub async fn own_file_lists(app: &AppState, caller: &Caller, mut info: Value) -> Result<Value, StoreError> {
    let me = caller.identity.user_id;
    let store = app.scheduler.store();
    let inputs: Vec<String> = store
        .files_of(me, "input", LISTED_FILES)
        .await?
        .into_iter()
        .filter_map(|f| user_view_of(me, &f.subfolder).map(|sub| join(&sub, &f.filename)))
        .collect();
    let outputs: Vec<String> = store
        .files_of(me, "output", LISTED_FILES)
        .await?
        .into_iter()
        .map(|f| format!("{} [output]", join(&f.subfolder, &f.filename)))
        .collect();
    let mut sorted_inputs = inputs;
    sorted_inputs.sort();
    sorted_inputs.dedup();
    let Some(classes) = info.as_object_mut() else { return Ok(info) };
    for (class, definition) in classes.iter_mut() {
        for input in file_inputs(class, Some(definition)) {
            let own = match input.folder {
                Kind::Output => &outputs,
                _ => &sorted_inputs,
            };
            for section in ["required", "optional"] {
                if let Some(spec) = definition["input"][section].get_mut(&input.name) {
                    replace_choices(spec, own);
                }
            }
        }
    }
    Ok(info)
}

/// Replaces the values of a choice spec (`[[...], {...}]` or `["COMBO", {"options": [...]}]`).
fn replace_choices(spec: &mut Value, values: &[String]) {
    let list = Value::Array(values.iter().cloned().map(Value::String).collect());
    if spec[0].is_array() {
        spec[0] = list;
    } else if spec[1].get("options").is_some() {
        spec[1]["options"] = list;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upload_inputs_are_found_by_their_flags() {
        let load =
            json!({"input": {"required": {"image": [["example.png"], {"image_upload": true}], "x": ["INT", {}]}}});
        assert_eq!(file_inputs("LoadImage", Some(&load)), [FileInput { name: "image".into(), folder: Kind::Input }]);
        let out =
            json!({"input": {"required": {"image": ["COMBO", {"image_upload": true, "image_folder": "output"}]}}});
        assert_eq!(file_inputs("LoadImageOutput", Some(&out))[0].folder, Kind::Output);
        let video = json!({"input": {"optional": {"file": ["COMBO", {"options": [], "video_upload": true}]}}});
        assert_eq!(file_inputs("LoadVideo", Some(&video))[0].name, "file");
        assert!(file_inputs("KSampler", Some(&json!({"input": {"required": {"seed": ["INT", {}]}}}))).is_empty());
        assert_eq!(file_inputs("LoadImageMask", None)[0].name, "image", "assumed before nodes are known");
        assert!(file_inputs("SaveImage", None).is_empty());
    }

    #[test]
    fn choice_lists_are_replaced_in_both_shapes() {
        let mut old = json!([["a.png", "b.png"], {"image_upload": true}]);
        replace_choices(&mut old, &["mine.png".to_owned()]);
        assert_eq!(old[0], json!(["mine.png"]));
        let mut combo = json!(["COMBO", {"options": ["a"], "video_upload": true}]);
        replace_choices(&mut combo, &[]);
        assert_eq!(combo[1]["options"], json!([]));
    }
}
