package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/optimd/optimd/clients/go/internal/daemontest"
)

// The example trains against a real daemon and gets the loss down to the
// noise level (the noise's variance is 1e-4).
func TestLinreg(t *testing.T) {
	d := daemontest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	loss, err := run(ctx, d.URL, 300, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	initial, _, _ := makeData(256).lossAndGrad(make([]float64, features), 0)
	if loss > 1e-3 || loss > initial/1000 {
		t.Fatalf("final loss %g (initial %g)", loss, initial)
	}
	if !strings.Contains(out.String(), "step  300") {
		t.Fatalf("the example printed no final step:\n%s", out.String())
	}
}
