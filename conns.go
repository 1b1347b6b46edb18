package porter

import (
	"errors"
	"sync"

	"github.com/porter-ipc/porter/broker"
	"github.com/porter-ipc/porter/fdpass"
)

// onBroker calls fn with the process's connection to the broker at path,
// and once more on a new connection if that one has broken (the broker
// restarted): a refusal from the broker itself is final.
func onBroker(path string, fn func(*broker.Client) error) (*broker.Client, error) {
	for attempt := 0; ; attempt++ {
		cl, err := client(path)
		if err != nil {
			return nil, err
		}
		err = fn(cl)
		if connGone(err) && attempt == 0 {
			dropClient(path, cl) // broken, or closed by a broker that stopped
			continue
		}
		return cl, err
	}
}

// connGone says whether err means the connection is gone, with every
// reference it held: it broke, or a broker that stopped closed it. Any
// other refusal of the broker's leaves it open, and so does this
// process running out of fds for an answer's socket (the connection is
// still in step; dropping it would release every socket the process got
// through it).
func connGone(err error) bool {
	var be *broker.Error
	if err == nil || errors.Is(err, fdpass.ErrFDLimit) {
		return false
	}
	return !errors.As(err, &be) || errors.Is(err, broker.ErrShuttingDown)
}

// The process's broker connections, one per control socket, open for the
// life of the process: the broker counts this process as a holder of every
// socket obtained through one until it is released or the process exits.
var clients struct {
	sync.Mutex
	m map[string]*broker.Client
}

func client(path string) (*broker.Client, error) {
	clients.Lock()
	defer clients.Unlock()
	if c := clients.m[path]; c != nil {
		return c, nil
	}
	c, err := broker.Dial(path)
	if err != nil {
		return nil, err
	}
	if clients.m == nil {
		clients.m = map[string]*broker.Client{}
	}
	clients.m[path] = c
	return c, nil
}

func dropClient(path string, c *broker.Client) {
	clients.Lock()
	defer clients.Unlock()
	if clients.m[path] == c {
		delete(clients.m, path)
		c.Close()
	}
}

func releaseOn(path string, t broker.Token) error {
	clients.Lock()
	c := clients.m[path]
	clients.Unlock()
	if c == nil {
		var err error
		if c, err = client(path); err != nil {
			return err
		}
	}
	err := c.Release(t)
	if connGone(err) {
		// The connection is gone, and with it every reference it held.
		dropClient(path, c)
		return nil
	}
	return err
}

// closeClients closes the process's broker connections, releasing every
// reference they hold. For tests.
func closeClients() {
	clients.Lock()
	defer clients.Unlock()
	for p, c := range clients.m {
		c.Close()
		delete(clients.m, p)
	}
}
