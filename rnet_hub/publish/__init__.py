"""Publishing: model cards (one template), pushes to the Hub, and the batch pipeline over the ten archives.

* :mod:`.cards`: the full model card of a converted folder, from the one template in ``templates/``;
* :mod:`.push`: one folder -> one Hub commit, retried without ever making a second one;
* :mod:`.batch`: convert many archives, reusing verified earlier conversions;
* :mod:`.pipeline`: convert, card and push all ten, recording what landed in a manifest.
"""
