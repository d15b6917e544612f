"""HTTP edge: the resolver, requests, responses and Bundle rendering, the ONE place errors become HTTP."""
