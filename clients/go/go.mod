module github.com/optimd/optimd/clients/go

go 1.21

require (
	github.com/vmihailenco/msgpack/v5 v5.4.1
	go.nanomsg.org/mangos/v3 v3.4.2
	golang.org/x/crypto v0.33.0
)

require (
	github.com/Microsoft/go-winio v0.5.2 // indirect
	github.com/gorilla/websocket v1.5.0 // indirect
	github.com/vmihailenco/tagparser/v2 v2.0.0 // indirect
	golang.org/x/sys v0.30.0 // indirect
)
