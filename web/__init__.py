"""The web application: routes, pages, JSON API and the `huiyun` command line."""
