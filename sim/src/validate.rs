//! Prompt validation, following ComfyUI 0.3.64's `execution.validate_prompt`.

use std::collections::HashSet;

use indexmap::IndexMap;

use crate::json::{J, Obj, PyNum, num_to_pynum, pynum_cmp};

/// Node definitions the validator looks classes up in.
pub struct Defs<'a> {
    pub info: &'a J,
    /// Files offered by `LoadImage`/`LoadImageMask` (the input folder).
    pub input_images: Vec<J>,
}

impl Defs<'_> {
    pub fn class(&self, name: &str) -> Option<J> {
        let mut def = self.info.get(name)?.clone();
        if (name == "LoadImage" || name == "LoadImageMask")
            && let Some(spec) =
                def.get_mut("input").and_then(|i| i.get_mut("required")).and_then(|r| r.get_mut("image"))
        {
            crate::objinfo::set_combo_options(spec, self.input_images.clone(), false);
        }
        Some(def)
    }
    pub fn has(&self, name: &str) -> bool {
        self.info.get(name).is_some()
    }
}

/// Result of a successful validation: outputs to execute and (possibly non-empty) node errors.
pub struct Valid {
    pub outputs: Vec<String>,
    pub node_errors: J,
}

/// A rejected prompt: the `error` object and `node_errors`.
pub struct Invalid {
    pub error: J,
    pub node_errors: J,
}

fn error(t: &str, message: &str, details: &str, extra_info: J) -> J {
    J::obj([("type", J::s(t)), ("message", J::s(message)), ("details", J::s(details)), ("extra_info", extra_info)])
}

fn invalid(t: &str, message: &str, details: &str) -> Box<Invalid> {
    Box::new(Invalid { error: error(t, message, details, J::empty_obj()), node_errors: J::empty_obj() })
}

/// Validates (and, like ComfyUI, normalises the input values of) a prompt.
pub fn validate_prompt(defs: &Defs, prompt: &mut Obj) -> Result<Valid, Box<Invalid>> {
    let mut outputs = Vec::new();
    for (id, node) in prompt.iter() {
        let Some(class_type) = node.get("class_type") else {
            return Err(invalid(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                &format!("Node ID '#{id}'"),
            ));
        };
        let known = class_type.as_str().filter(|c| defs.has(c));
        let Some(class_type) = known else {
            return Err(invalid(
                "invalid_prompt",
                &format!("Cannot execute because node {} does not exist.", class_type.py_str()),
                &format!("Node ID '#{id}'"),
            ));
        };
        let is_output = defs.info.get(class_type).and_then(|d| d.get("output_node")) == Some(&J::Bool(true));
        if is_output {
            outputs.push(id.clone());
        }
    }
    if outputs.is_empty() {
        return Err(invalid("prompt_no_outputs", "Prompt has no outputs", ""));
    }

    let mut ctx = Ctx { defs, prompt, validated: IndexMap::new(), in_progress: HashSet::new() };
    let mut good = Vec::new();
    let mut failed: Vec<(String, Vec<J>)> = Vec::new();
    let mut node_errors = Obj::new();
    for o in &outputs {
        let ok = match ctx.validate_node(o, 0) {
            Ok(ok) => ok,
            Err(msg) => {
                let reason = error(
                    "exception_during_validation",
                    "Exception when validating node",
                    &msg,
                    J::obj([("exception_type", J::s("RecursionError")), ("traceback", J::Arr(vec![]))]),
                );
                ctx.validated.insert(o.clone(), (false, vec![reason]));
                false
            }
        };
        if ok {
            good.push(o.clone());
            continue;
        }
        let own = ctx.validated.get(o).map(|(_, r)| r.clone()).unwrap_or_default();
        failed.push((o.clone(), own));
        for (node_id, (valid, reasons)) in &ctx.validated {
            if *valid || reasons.is_empty() {
                continue;
            }
            let entry = node_errors.entry(node_id.clone()).or_insert_with(|| {
                let class_type = ctx.prompt.get(node_id).and_then(|n| n.get("class_type")).cloned().unwrap_or(J::Null);
                J::obj([
                    ("errors", J::Arr(reasons.clone())),
                    ("dependent_outputs", J::Arr(vec![])),
                    ("class_type", class_type),
                ])
            });
            if let Some(J::Arr(deps)) = entry.get_mut("dependent_outputs") {
                deps.push(J::s(o.as_str()));
            }
        }
    }
    if good.is_empty() {
        let mut lines = Vec::new();
        for (_, reasons) in &failed {
            for r in reasons {
                let m = r.get("message").map(J::py_str).unwrap_or_default();
                let d = r.get("details").map(J::py_str).unwrap_or_default();
                lines.push(format!("{m}: {d}"));
            }
        }
        return Err(Box::new(Invalid {
            error: error(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                &lines.join("\n"),
                J::empty_obj(),
            ),
            node_errors: J::Obj(node_errors),
        }));
    }
    Ok(Valid { outputs: good, node_errors: J::Obj(node_errors) })
}

struct Ctx<'a, 'b> {
    defs: &'a Defs<'b>,
    prompt: &'a mut Obj,
    validated: IndexMap<String, (bool, Vec<J>)>,
    in_progress: HashSet<String>,
}

const RECURSION: &str = "maximum recursion depth exceeded";

/// ComfyUI's `validate_node_input`.
fn types_compatible(received: &J, input: &J) -> bool {
    if received == input {
        return true;
    }
    let (Some(r), Some(i)) = (received.as_str(), input.as_str()) else {
        return false;
    };
    let rs: HashSet<&str> = r.split(',').map(str::trim).collect();
    let is: HashSet<&str> = i.split(',').map(str::trim).collect();
    if rs.contains("*") || is.contains("*") {
        return true;
    }
    rs.intersection(&is).next().is_some()
}

fn convert(input_type: &str, val: &J) -> Result<Option<J>, String> {
    let tn = |v: &J| match v {
        J::Null => "NoneType",
        J::Obj(_) => "dict",
        J::Arr(_) => "list",
        _ => "object",
    };
    match input_type {
        "INT" => match val {
            J::Bool(_) | J::Num(_) => match val.as_pynum() {
                Some(PyNum::Int(i)) => Ok(Some(PyNum::Int(i).to_j())),
                Some(PyNum::Float(f)) if f.is_finite() => Ok(Some(PyNum::Int(f.trunc() as i128).to_j())),
                _ => Err("cannot convert float infinity to integer".into()),
            },
            J::Str(s) => {
                let t = s.trim().replace('_', "");
                t.parse::<i128>()
                    .map(|i| Some(PyNum::Int(i).to_j()))
                    .map_err(|_| format!("invalid literal for int() with base 10: {}", J::s(s.as_str()).py_repr()))
            }
            other => Err(format!(
                "int() argument must be a string, a bytes-like object or a real number, not '{}'",
                tn(other)
            )),
        },
        "FLOAT" => match val {
            J::Bool(_) | J::Num(_) => match val.as_pynum() {
                Some(PyNum::Int(i)) => Ok(Some(J::float(i as f64))),
                Some(PyNum::Float(f)) => Ok(Some(J::float(f))),
                None => Ok(None),
            },
            J::Str(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| Some(J::float(f)))
                .ok_or_else(|| format!("could not convert string to float: {}", J::s(s.as_str()).py_repr())),
            other => Err(format!("float() argument must be a string or a real number, not '{}'", tn(other))),
        },
        "STRING" => Ok(Some(J::Str(val.py_str()))),
        "BOOLEAN" => Ok(Some(J::Bool(val.truthy()))),
        _ => Ok(None),
    }
}

impl Ctx<'_, '_> {
    fn validate_node(&mut self, id: &str, depth: usize) -> Result<bool, String> {
        if let Some((ok, _)) = self.validated.get(id) {
            return Ok(*ok);
        }
        if depth > 500 || self.in_progress.contains(id) {
            return Err(RECURSION.to_string());
        }
        let node = self.prompt.get(id).cloned().unwrap_or(J::Null);
        let class_type = node.get("class_type").and_then(J::as_str).unwrap_or_default().to_string();
        let Some(def) = self.defs.class(&class_type) else {
            self.validated.insert(id.to_string(), (false, vec![]));
            return Ok(false);
        };
        let inputs = node.get("inputs").and_then(J::as_obj).cloned().unwrap_or_default();
        self.in_progress.insert(id.to_string());

        let mut errors = Vec::new();
        let mut valid = true;
        let mut converted: Vec<(String, J)> = Vec::new();
        for section in ["required", "optional"] {
            let Some(specs) = def.get("input").and_then(|i| i.get(section)).and_then(J::as_obj) else {
                continue;
            };
            for (name, spec) in specs {
                let input_type = spec.as_arr().and_then(|a| a.first()).cloned().unwrap_or(J::Null);
                let extra = spec.as_arr().and_then(|a| a.get(1)).cloned().unwrap_or(J::empty_obj());
                let info = J::Arr(vec![input_type.clone(), extra.clone()]);
                let Some(val) = inputs.get(name) else {
                    if section == "required" {
                        errors.push(error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            J::obj([("input_name", J::s(name.as_str()))]),
                        ));
                    }
                    continue;
                };
                if let J::Arr(link) = val {
                    let bad = |errors: &mut Vec<J>| {
                        errors.push(error(
                            "bad_linked_input",
                            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            name,
                            J::obj([
                                ("input_name", J::s(name.as_str())),
                                ("input_config", info.clone()),
                                ("received_value", val.clone()),
                            ]),
                        ));
                    };
                    let target = match link.as_slice() {
                        [J::Str(o_id), slot] => self.prompt.get(o_id).map(|n| (o_id.clone(), n.clone(), slot)),
                        _ => None,
                    };
                    let Some((o_id, o_node, slot)) = target else {
                        bad(&mut errors);
                        continue;
                    };
                    let o_class = o_node.get("class_type").and_then(J::as_str).unwrap_or_default();
                    let o_outputs = self.defs.class(o_class).and_then(|d| d.get("output").cloned());
                    let received = match (o_outputs, slot.as_pynum()) {
                        (Some(J::Arr(outs)), Some(PyNum::Int(i))) if !matches!(slot, J::Bool(_)) => {
                            let idx = if i < 0 { outs.len() as i128 + i } else { i };
                            usize::try_from(idx).ok().and_then(|i| outs.get(i)).cloned()
                        }
                        _ => None,
                    };
                    let Some(received) = received else {
                        bad(&mut errors);
                        continue;
                    };
                    if !types_compatible(&received, &input_type) {
                        errors.push(error(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            &format!(
                                "{name}, received_type({}) mismatch input_type({})",
                                received.py_str(),
                                input_type.py_str()
                            ),
                            J::obj([
                                ("input_name", J::s(name.as_str())),
                                ("input_config", info.clone()),
                                ("received_type", received.clone()),
                                ("linked_node", val.clone()),
                            ]),
                        ));
                        continue;
                    }
                    match self.validate_node(&o_id, depth + 1) {
                        Ok(true) => {}
                        Ok(false) => valid = false,
                        Err(msg) => {
                            valid = false;
                            let reason = error(
                                "exception_during_inner_validation",
                                "Exception when validating inner node",
                                &msg,
                                J::obj([
                                    ("input_name", J::s(name.as_str())),
                                    ("input_config", info.clone()),
                                    ("exception_message", J::s(msg.as_str())),
                                    ("exception_type", J::s("RecursionError")),
                                    ("traceback", J::Arr(vec![])),
                                    ("linked_node", val.clone()),
                                ]),
                            );
                            self.validated.insert(o_id.clone(), (false, vec![reason]));
                        }
                    }
                    continue;
                }

                let mut val = match val.get("__value__") {
                    Some(inner) => inner.clone(),
                    None => val.clone(),
                };
                if let Some(t) = input_type.as_str() {
                    match convert(t, &val) {
                        Ok(Some(v)) => val = v,
                        Ok(None) => {}
                        Err(ex) => {
                            errors.push(error(
                                "invalid_input_type",
                                &format!("Failed to convert an input value to a {t} value"),
                                &format!("{name}, {}, {ex}", val.py_str()),
                                J::obj([
                                    ("input_name", J::s(name.as_str())),
                                    ("input_config", info.clone()),
                                    ("received_value", val.clone()),
                                    ("exception_message", J::s(ex.as_str())),
                                ]),
                            ));
                            continue;
                        }
                    }
                }
                converted.push((name.clone(), val.clone()));

                if let Some(v) = val.as_pynum().filter(|_| matches!(val, J::Num(_))) {
                    if let Some(J::Num(min)) = extra.get("min")
                        && pynum_cmp(v, num_to_pynum(min)) == Some(std::cmp::Ordering::Less)
                    {
                        errors.push(error(
                            "value_smaller_than_min",
                            &format!("Value {} smaller than min of {}", v.py_str(), num_to_pynum(min).py_str()),
                            name,
                            J::obj([
                                ("input_name", J::s(name.as_str())),
                                ("input_config", info.clone()),
                                ("received_value", val.clone()),
                            ]),
                        ));
                        continue;
                    }
                    if let Some(J::Num(max)) = extra.get("max")
                        && pynum_cmp(v, num_to_pynum(max)) == Some(std::cmp::Ordering::Greater)
                    {
                        errors.push(error(
                            "value_bigger_than_max",
                            &format!("Value {} bigger than max of {}", v.py_str(), num_to_pynum(max).py_str()),
                            name,
                            J::obj([
                                ("input_name", J::s(name.as_str())),
                                ("input_config", info.clone()),
                                ("received_value", val.clone()),
                            ]),
                        ));
                        continue;
                    }
                }

                let options = match &input_type {
                    J::Arr(list) => Some(list.clone()),
                    J::Str(t) if t == "COMBO" => extra.get("options").and_then(J::as_arr).cloned(),
                    _ => None,
                };
                if let Some(options) = options
                    && !options.iter().any(|o| o.py_eq(&val))
                {
                    let (list_info, input_config) = if options.len() > 20 {
                        (format!("(list of length {})", options.len()), J::Null)
                    } else {
                        (J::Arr(options.clone()).py_repr(), info.clone())
                    };
                    errors.push(error(
                        "value_not_in_list",
                        "Value not in list",
                        &format!("{name}: '{}' not in {list_info}", val.py_str()),
                        J::obj([
                            ("input_name", J::s(name.as_str())),
                            ("input_config", input_config),
                            ("received_value", val.clone()),
                        ]),
                    ));
                    continue;
                }
            }
        }

        if let Some(J::Obj(inputs)) = self.prompt.get_mut(id).and_then(|n| n.get_mut("inputs")) {
            for (k, v) in converted {
                inputs.insert(k, v);
            }
        }
        self.in_progress.remove(id);
        let ok = errors.is_empty() && valid;
        self.validated.insert(id.to_string(), (ok, errors));
        Ok(ok)
    }
}
