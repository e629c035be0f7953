"""Use cases that chain several layers, callable by any front end (the CLI, the web view).

Above vm/, remote/, trust/ and guest/, below cli/ and web/: pull then verify then use an image for a
VM; publish then check then replicate; push signed (the signing key an argument); revoke and push the
statement; and the JSON shapes both front ends print. A front end parses and renders; it does not
compose these steps itself.
"""
