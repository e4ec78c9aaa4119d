// Package optimd is a client for the optimd daemon, which applies
// optimizer updates (SGD, Adam, AdamW, ...) to parameters it holds for its
// clients. It speaks the wire protocol of docs/protocol.md: msgpack maps
// over Scalability Protocols REQ/REP, here through mangos (pure Go).
//
// A Client has one method per protocol op; every method takes a
// context.Context, whose deadline or cancellation ends the wait for the
// reply. Errors the daemon reports are *ServerError values, which match the
// Err* sentinels with errors.Is; replies this client cannot accept are
// *ProtocolError values (errors.Is(err, ErrProtocol)).
//
// The request builders (NewStepRequest, ...) and reply parsers
// (ParseStepReply, ...) work without a connection: Client.Do sends a built
// request and returns the raw reply.
package optimd
