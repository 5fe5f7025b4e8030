"""The official Python `kubernetes` client against a running Shoal server.

Usage: python3 client_test.py KUBECONFIG. Exits non-zero (with a traceback) on any mismatch.
"""
import sys
import threading

from kubernetes import client, config, watch


def main(kubeconfig: str) -> None:
    config.load_kube_config(kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert {"default", "kube-system"} <= set(names), names

    created = core.create_namespaced_config_map(
        "default",
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="py", labels={"app": "py"}),
            data={"greeting": "hello"},
        ),
    )
    assert created.metadata.uid and created.metadata.resource_version, created.metadata

    # Watch from the creation's resourceVersion while the object changes.
    events = []
    watcher = watch.Watch()

    def follow() -> None:
        for event in watcher.stream(
            core.list_namespaced_config_map,
            "default",
            resource_version=created.metadata.resource_version,
            timeout_seconds=10,
        ):
            events.append((event["type"], event["object"].metadata.name))
            if len(events) == 2:
                watcher.stop()

    thread = threading.Thread(target=follow)
    thread.start()

    patched = core.patch_namespaced_config_map(
        "py", "default", {"metadata": {"labels": {"tier": "front"}}}
    )
    assert patched.metadata.labels == {"app": "py", "tier": "front"}, patched.metadata.labels

    listed = core.list_namespaced_config_map("default", label_selector="tier=front")
    assert [cm.metadata.name for cm in listed.items] == ["py"], listed.items

    # A stale resourceVersion is a 409 Conflict.
    stale = core.read_namespaced_config_map("py", "default")
    stale.metadata.resource_version = created.metadata.resource_version
    try:
        core.replace_namespaced_config_map("py", "default", stale)
        raise AssertionError("a stale update was accepted")
    except client.ApiException as err:
        assert err.status == 409, err

    core.delete_namespaced_config_map("py", "default")
    thread.join(15)
    assert events == [("MODIFIED", "py"), ("DELETED", "py")], events

    try:
        core.read_namespaced_config_map("py", "default")
        raise AssertionError("a deleted object is still readable")
    except client.ApiException as err:
        assert err.status == 404, err

    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="busybox")]),
            ),
        ),
    )
    apps.create_namespaced_deployment("default", deployment)
    scale = apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 4}})
    assert scale.spec.replicas == 4, scale
    assert apps.read_namespaced_deployment("web", "default").spec.replicas == 4
    apps.delete_namespaced_deployment("web", "default")
    print("python client: ok")


if __name__ == "__main__":
    main(sys.argv[1])
