"""Run-it-here parts: the embedded broker and Milvus server runners, the demo, the sample catalog, the synthetic stream and the exactness proof."""
