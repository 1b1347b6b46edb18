// Package cap is object-capability RPC between processes on one host: an
// object lives in a server process, and the right to call it is a Unix
// socket fd, a *Ref, which cannot be guessed or forged, only handed over
// (in a call's arguments or result, or to a child at its start).
//
// A server exports objects whose methods have the form
// func(ctx context.Context, args A) (R, error); a client calls them by name
// with Ref.Call. Every object has its own socket pair, its door: a Ref is
// an fd of the door's client end, so no message names an object and a
// holder of one Ref cannot reach another object. Each process opens one
// session per object through the door and shares it among its callers.
// A process holds one fd per object however often it receives it.
//
// Ownership follows porter's rule: sending borrows (Refs and files in
// arguments stay the caller's), receiving gives (Refs and files in a
// method's arguments or a call's result are the receiver's to Close). A
// method gives the files it returns and keeps the Refs it returns.
//
// The wire protocol is docs/protocol-cap.md; docs/capabilities.md explains
// the model with an example.
package cap
