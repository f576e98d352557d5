//! Flattening a parsed event (a [`Value`]).

use serde_json::Value;

use super::tape::{FlatEvent, MAX_EVENT_DEPTH, Slot};
use crate::pattern::fields::Fields;

impl FlatEvent {
    /// Flattens a parsed event.
    pub(crate) fn read_value(&mut self, fields: &Fields, v: &Value) {
        self.clear();
        self.value(fields, 0, v, 0);
        // Every string came from a `&str`.
        let _ = self.finish_text();
    }

    fn value(&mut self, fields: &Fields, field: u32, v: &Value, depth: usize) -> u32 {
        match v {
            Value::Object(map) => {
                let slot = self.push_slot(Slot::Null);
                let mark = self.pending_members.len();
                if depth < MAX_EVENT_DEPTH {
                    for &child in &fields.node(field).children {
                        if let Some(cv) = map.get(&*fields.node(child).name) {
                            let s = self.value(fields, child, cv, depth + 1);
                            self.pending_members.push((child, s));
                        }
                    }
                }
                self.close_object(slot, mark);
                slot
            }
            Value::Array(items) => {
                let slot = self.push_slot(Slot::Null);
                let mark = self.pending_elems.len();
                if depth < MAX_EVENT_DEPTH {
                    for item in items {
                        let s = self.value(fields, field, item, depth + 1);
                        self.pending_elems.push(s);
                    }
                }
                self.close_array(slot, mark);
                slot
            }
            Value::String(s) => self.push_str(field, s),
            Value::Number(n) => self.push_scalar(field, n.as_f64().map_or(Slot::Null, Slot::Num)),
            Value::Bool(b) => self.push_scalar(field, Slot::Bool(*b)),
            Value::Null => self.push_scalar(field, Slot::Null),
        }
    }
}
