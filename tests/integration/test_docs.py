"""docs/optimizers.md against the real daemon: every loaded plugin has a row
in the catalog, with its kind, and the row names the plugin's hyperparameter
keys in declaration order, bold exactly where the key is mutable. Run by
CTest with /usr/bin/python3."""
import os
import re
import unittest

from nngwire import Daemon, Req

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "optimizers.md")


def catalog_rows():
    rows = {}
    with open(DOC) as f:
        for line in f:
            m = re.match(r"\| `([a-z0-9_.-]+)` \| (optimizer|scheduler) \| (.*?) \| .* \|$", line.strip())
            if m:
                rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


class OptimizersDoc(unittest.TestCase):
    def test_catalog_matches_the_loaded_plugins(self):
        d = Daemon()
        try:
            c = Req(d.url)
            plugins = c.call("plugins")["plugins"]
            c.close()
        finally:
            self.assertEqual(d.stop(), 0)
            d.cleanup()
        rows = catalog_rows()
        self.assertGreaterEqual(len(plugins), 30)
        for p in plugins:
            with self.subTest(p["id"]):
                self.assertTrue(p["id"] in rows, "docs/optimizers.md has no row for " + p["id"])
                kind, cell = rows[p["id"]]
                self.assertEqual(kind, p["kind"])
                # `key` or **`key`** (mutable), in the order they appear.
                found = re.findall(r"(\*\*)?`([A-Za-z0-9_]+)`(\*\*)?", cell)
                keys = [k for _, k, _ in found]
                declared = [h["key"] for h in p["hparams"]]
                listed = [k for k in keys if k in declared]
                self.assertEqual(listed, declared, "keys of %s in the doc" % p["id"])
                bold = {k for b, k, _ in found if b}
                for h in p["hparams"]:
                    self.assertEqual(h["key"] in bold, h["mutable"],
                                     "%s.%s: bold means mutable" % (p["id"], h["key"]))
        self.assertEqual(sorted(set(rows) - {p["id"] for p in plugins}), [], "rows for no plugin")
        # The "Sliced steps" section names exactly the optimizers that take them.
        with open(DOC) as f:
            text = f.read()
        section = text.split("## Sliced steps", 1)[1].split("These are:", 1)[1].split("Parity:", 1)[0]
        named = re.findall(r"`([a-z0-9_]+)`", section)
        self.assertEqual(named, sorted(named), "keep the list sorted")
        self.assertEqual(set(named), {p["id"] for p in plugins if p.get("sliced")})


if __name__ == "__main__":
    unittest.main(verbosity=2)
