"""Files: image reading and writing, input collection, the batch runner (resume, shards,
failures), datasets in the MVTec layout and the HTML report."""
