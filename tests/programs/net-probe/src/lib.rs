//! Network probe: one GET through `wasi:http/outgoing-handler`.

wit_bindgen::generate!({ world: "net-probe" });

use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, OutgoingRequest, Scheme};

struct Probe;

impl Guest for Probe {
    fn fetch(url: String) -> Result<u16, String> {
        let (scheme, rest) = url.split_once("://").ok_or("url needs a scheme")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let request = OutgoingRequest::new(Fields::new());
        request
            .set_scheme(Some(&match scheme {
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                other => Scheme::Other(other.to_string()),
            }))
            .map_err(|()| "bad scheme")?;
        request
            .set_authority(Some(authority))
            .map_err(|()| "bad authority")?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| "bad path")?;
        let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or("no response")?
            .map_err(|()| "response taken twice")?
            .map_err(|e| format!("{e:?}"))?;
        Ok(response.status())
    }
}

export!(Probe);
