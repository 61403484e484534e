//! Chat templates rendered by `ChatTemplate` against the strings
//! `transformers`' `apply_chat_template` produced for the same templates
//! and history (tools/make_chat_template_fixture.py).

use crate::fixture;
use bitnet_models::chat::{ChatMessage, ChatTemplate, LLAMA3_TEMPLATE};

#[test]
fn templates_render_exactly_as_transformers() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("chat_templates_expected.json")).unwrap(),
    )
    .unwrap();
    let bos = doc["bos_token"].as_str().unwrap();
    let eos = doc["eos_token"].as_str().unwrap();
    let messages: Vec<ChatMessage> = doc["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(messages.len(), 3);
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = case["template"].as_str().unwrap();
        if name == "builtin" {
            assert_eq!(
                text, LLAMA3_TEMPLATE,
                "the fixture's copy of the built-in template"
            );
        }
        let gen_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let t = ChatTemplate::new(text, name).unwrap();
        let got = t.render(&messages, gen_prompt, bos, eos).unwrap();
        assert_eq!(
            got,
            case["expected"].as_str().unwrap(),
            "{name} {gen_prompt}"
        );
    }
}
