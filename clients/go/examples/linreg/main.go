// Command linreg fits a linear regression whose optimizer runs in optimd:
// the program computes the loss and gradients locally, the daemon applies
// Adam to the weights and sends them back.
//
//	go run ./examples/linreg -url tcp://127.0.0.1:7878
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"os"
	"time"

	"github.com/optimd/optimd/clients/go/optimd"
)

const features = 4

func main() {
	url := os.Getenv("OPTIMD_URL")
	if url == "" {
		url = optimd.DefaultURL
	}
	flag.StringVar(&url, "url", url, "daemon address (default $OPTIMD_URL or "+optimd.DefaultURL+")")
	steps := flag.Int("steps", 300, "optimizer steps")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := run(ctx, url, *steps, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// dataset is y = x·trueW + trueB + noise, fixed by its seed.
type dataset struct {
	x [][features]float64
	y []float64
}

func makeData(n int) dataset {
	rng := rand.New(rand.NewSource(1))
	trueW := [features]float64{2, -3, 0.5, 1.25}
	const trueB = -0.75
	d := dataset{x: make([][features]float64, n), y: make([]float64, n)}
	for i := range d.x {
		y := trueB
		for j := range d.x[i] {
			d.x[i][j] = rng.NormFloat64()
			y += trueW[j] * d.x[i][j]
		}
		d.y[i] = y + 0.01*rng.NormFloat64()
	}
	return d
}

// lossAndGrad is the mean squared error and its gradient in w and b.
func (d dataset) lossAndGrad(w []float64, b float64) (loss float64, gw []float64, gb float64) {
	gw = make([]float64, features)
	for i, x := range d.x {
		pred := b
		for j := range x {
			pred += w[j] * x[j]
		}
		r := pred - d.y[i]
		loss += r * r
		for j := range x {
			gw[j] += 2 * r * x[j]
		}
		gb += 2 * r
	}
	n := float64(len(d.x))
	for j := range gw {
		gw[j] /= n
	}
	return loss / n, gw, gb / n
}

// run trains for the given number of steps, printing the loss as it goes,
// and returns the final loss.
func run(ctx context.Context, url string, steps int, out io.Writer) (float64, error) {
	client, err := optimd.Dial(url, nil)
	if err != nil {
		return 0, err
	}
	defer client.Close()

	opened, err := client.Open(ctx, fmt.Sprintf("linreg-%d", os.Getpid()), "adam", &optimd.OpenOptions{
		Hparams:    optimd.Hparams{"lr": 0.05},
		Durability: optimd.DurabilityNone, // a throwaway session
	})
	if err != nil {
		return 0, err
	}
	session := opened.Session
	defer client.CloseSession(context.WithoutCancel(ctx), session)

	w, b := make([]float64, features), 0.0
	if _, err := client.Register(ctx, session, map[string]optimd.Tensor{
		"w": optimd.FromFloat64(w),
		"b": optimd.FromFloat64([]float64{b}, []uint64{}...), // a scalar
	}); err != nil {
		return 0, err
	}

	data := makeData(256)
	var loss float64
	for step := 0; step <= steps; step++ {
		var gw []float64
		var gb float64
		loss, gw, gb = data.lossAndGrad(w, b)
		if step%50 == 0 || step == steps {
			fmt.Fprintf(out, "step %4d  loss %.6f\n", step, loss)
		}
		if step == steps {
			break
		}
		res, err := client.Step(ctx, session, map[string]optimd.Tensor{
			"w": optimd.FromFloat64(gw),
			"b": optimd.FromFloat64([]float64{gb}, []uint64{}...),
		}, nil)
		if err != nil {
			return 0, err
		}
		if w, err = res.Params["w"].Float64s(); err != nil {
			return 0, err
		}
		bs, err := res.Params["b"].Float64s()
		if err != nil {
			return 0, err
		}
		b = bs[0]
	}
	fmt.Fprintf(out, "w = %.3f, b = %.3f\n", w, b)
	return loss, nil
}
