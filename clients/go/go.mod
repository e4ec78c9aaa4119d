module github.com/optimd/optimd/clients/go

go 1.21

require (
	github.com/vmihailenco/msgpack/v5 v5.4.1
	go.nanomsg.org/mangos/v3 v3.4.2
)

require (
	github.com/Microsoft/go-winio v0.5.2 // indirect
	github.com/gorilla/websocket v1.5.0 // indirect
	github.com/vmihailenco/tagparser/v2 v2.0.0 // indirect
	golang.org/x/sys v0.0.0-20210124154548-22da62e12c0c // indirect
)
