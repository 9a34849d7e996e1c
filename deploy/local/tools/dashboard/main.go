// Command dashboard-check decodes a Grafana dashboard JSON strictly into the schema types of
// github.com/grafana/grafana-foundation-sdk (pinned in go.mod): unknown fields, missing required
// fields and wrongly typed values are refused, panel options and field configs are checked
// against their panel plugin's types, and every query against the Prometheus dataquery type.
//
// On success it prints one JSON object per line: {"panel": title, "refId": ..., "expr": ...}
// for every Prometheus query, taken from the decoded (typed) dashboard, so that a caller can
// run each one against a real Prometheus. On failure it prints the errors and exits 1.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

type query struct {
	Panel string `json:"panel"`
	RefID string `json:"refId"`
	Expr  string `json:"expr"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard-check DASHBOARD.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// Panel options and dataqueries are decoded through the plugin registry: without it they
	// would stay untyped and nothing below them would be checked.
	plugins.RegisterDefaultPlugins()

	var board dashboard.Dashboard
	if err := board.UnmarshalJSONStrict(raw); failed(err) {
		fmt.Fprintf(os.Stderr, "%s: not a valid dashboard: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	if err := board.Validate(); failed(err) {
		fmt.Fprintf(os.Stderr, "%s: dashboard fails validation: %v\n", os.Args[1], err)
		os.Exit(1)
	}

	// The queries are decoded again one by one from the raw panels. In this SDK version the
	// strict decoders of PanelOrRowPanel and of the dataquery variants mistake the empty error
	// list a nested decoder returns for an error: they report every real error (so the check
	// above is complete) but drop the values they decoded, leaving board.Panels without panels.
	var document struct {
		Panels []struct {
			Type    string            `json:"type"`
			Title   string            `json:"title"`
			Targets []json.RawMessage `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &document); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	for index, panel := range document.Panels {
		if panel.Type == "row" {
			continue // a row has no queries of its own
		}
		if len(panel.Targets) == 0 {
			fmt.Fprintf(os.Stderr, "panels[%d] %q: no queries\n", index, panel.Title)
			os.Exit(1)
		}
		for targetIndex, rawTarget := range panel.Targets {
			var promQuery prometheus.Dataquery
			if err := promQuery.UnmarshalJSONStrict(rawTarget); failed(err) {
				fmt.Fprintf(os.Stderr, "panels[%d].targets[%d]: not a Prometheus query: %v\n", index, targetIndex, err)
				os.Exit(1)
			}
			refID := ""
			if promQuery.RefId != nil {
				refID = *promQuery.RefId
			}
			if err := out.Encode(query{Panel: panel.Title, RefID: refID, Expr: promQuery.Expr}); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
}

// failed tells a real error from the SDK's empty error list: its functions return their
// cog.BuildErrors slice as an error even when it holds nothing.
func failed(err error) bool {
	if errs, ok := err.(cog.BuildErrors); ok {
		return len(errs) > 0
	}
	return err != nil
}
