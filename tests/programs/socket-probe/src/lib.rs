//! Socket probe: a raw TCP connection through wasi:sockets.

wit_bindgen::generate!({ world: "socket-probe" });

struct Probe;

impl Guest for Probe {
    fn connect(address: String) -> Result<(), String> {
        std::net::TcpStream::connect(address)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

export!(Probe);
